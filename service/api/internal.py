"""The internal API trainers report to, authenticated by the job's trainer token. Not part of the public schema."""

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from hone_kernel import trainer_contract as contract
from service import trainer_reports
from service.api.deps import get_ctx, get_graders
from service.api.routing import JSONRoute
from service.context import AppContext
from service.grading import Graders
from service.trainer_reports import Completion, Failure, ModelChat, Report

router = APIRouter(route_class=JSONRoute, prefix="/internal/fine_tuning/jobs/{job_id}", include_in_schema=False)


@router.post(contract.REPORT)
def report(job_id: str, body: Report, request: Request, ctx: AppContext = Depends(get_ctx)):
    return trainer_reports.record_report(ctx, job_id, request.headers.get("authorization"), body)


@router.post(contract.COMPLETE)
def complete(job_id: str, body: Completion, request: Request, ctx: AppContext = Depends(get_ctx)):
    return trainer_reports.complete(ctx, job_id, request.headers.get("authorization"), body)


@router.post(contract.FAIL)
def fail(job_id: str, body: Failure, request: Request, ctx: AppContext = Depends(get_ctx)):
    return trainer_reports.fail(ctx, job_id, request.headers.get("authorization"), body)


@router.post(contract.MODEL_CHAT)
async def model_chat(
    job_id: str,
    body: ModelChat,
    request: Request,
    ctx: AppContext = Depends(get_ctx),
    graders: Graders = Depends(get_graders),
):
    project_id = await run_in_threadpool(
        trainer_reports.running_job_project, ctx, job_id, request.headers.get("authorization")
    )
    return await graders.model_chat(project_id, body.model, body.messages, body.params)
