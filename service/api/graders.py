"""OpenAI's graders API: `POST /v1/fine_tuning/alpha/graders/run` and `/validate` (service/grading.py)."""

from fastapi import APIRouter, Depends

from service import api_models_graders as m
from service.api.contract import PROJECT, openai_errors
from service.api.deps import get_graders, project_principal
from service.api.routing import JSONRoute
from service.auth import ProjectPrincipal
from service.grading import Graders
from service.schemas import GraderRunRequest, GraderValidateRequest

router = APIRouter(
    route_class=JSONRoute,
    prefix="/v1/fine_tuning/alpha/graders",
    tags=["graders"],
    responses=openai_errors(*PROJECT),
)


@router.post("/run", response_model=m.GraderRunResponse)
async def run_grader(
    body: GraderRunRequest,
    principal: ProjectPrincipal = Depends(project_principal),
    graders: Graders = Depends(get_graders),
):
    return await graders.run(principal, body.grader, body.model_sample, body.item)


@router.post("/validate", response_model=m.GraderValidateResponse)
async def validate_grader(
    body: GraderValidateRequest,
    principal: ProjectPrincipal = Depends(project_principal),
    graders: Graders = Depends(get_graders),
):
    return await graders.validate(principal, body.grader)
