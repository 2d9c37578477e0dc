"""OpenAI's Evals API: evals, runs, output items (service/evals.py; runs execute in service/eval_runner.py)."""

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from service import api_models_evals as m
from service import evals
from service.api.contract import PROJECT, limit_query, openai_errors
from service.api.deps import get_ctx, get_graders, project_principal
from service.api.routing import JSONRoute, database_read
from service.auth import ProjectPrincipal
from service.context import AppContext
from service.eval_schemas import CreateEval, CreateEvalRun, UpdateEval
from service.grading import Graders
from service.pagination import check_limit

router = APIRouter(route_class=JSONRoute, prefix="/v1/evals", tags=["evals"], responses=openai_errors(*PROJECT))


@router.post("", response_model=m.EvalObject)
async def create_eval(
    body: CreateEval,
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
    graders: Graders = Depends(get_graders),
):
    return await evals.create_eval_checked(ctx, graders, principal, body)


@router.get("", response_model=m.EvalList)
@database_read
def list_evals(
    after: str | None = None,
    limit: int = limit_query(20, 100),
    order: str = "asc",
    order_by: str = "created_at",
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    return evals.list_evals(ctx, principal, after=after, limit=check_limit(limit, 100), order=order, order_by=order_by)


@router.get("/{eval_id}", response_model=m.EvalObject)
@database_read
def get_eval(
    eval_id: str, principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)
):
    return evals.get_eval(ctx, principal, eval_id)


@router.post("/{eval_id}", response_model=m.EvalObject)
def update_eval(
    eval_id: str,
    body: UpdateEval,
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    return evals.update_eval(ctx, principal, eval_id, body)


@router.delete("/{eval_id}", response_model=m.EvalDeleted)
def delete_eval(
    eval_id: str, principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)
):
    return evals.delete_eval(ctx, principal, eval_id)


@router.post("/{eval_id}/runs", response_model=m.EvalRunObject)
async def create_run(
    eval_id: str,
    body: CreateEvalRun,
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
    graders: Graders = Depends(get_graders),
):
    await evals.check_run(ctx, graders, principal, eval_id, body)
    return await run_in_threadpool(evals.create_run, ctx, principal, eval_id, body)


@router.get("/{eval_id}/runs", response_model=m.EvalRunList)
@database_read
def list_runs(
    eval_id: str,
    after: str | None = None,
    limit: int = limit_query(20, 100),
    order: str = "asc",
    status: str | None = None,
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    return evals.list_runs(
        ctx, principal, eval_id, after=after, limit=check_limit(limit, 100), order=order, status=status
    )


@router.get("/{eval_id}/runs/{run_id}", response_model=m.EvalRunObject)
@database_read
def get_run(
    eval_id: str,
    run_id: str,
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    return evals.get_run(ctx, principal, eval_id, run_id)


@router.post("/{eval_id}/runs/{run_id}/cancel", response_model=m.EvalRunObject)
def cancel_run(
    eval_id: str,
    run_id: str,
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    return evals.cancel_run(ctx, principal, eval_id, run_id)


@router.delete("/{eval_id}/runs/{run_id}", response_model=m.EvalRunDeleted)
def delete_run(
    eval_id: str,
    run_id: str,
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    return evals.delete_run(ctx, principal, eval_id, run_id)


@router.get("/{eval_id}/runs/{run_id}/output_items", response_model=m.OutputItemList)
@database_read
def list_output_items(
    eval_id: str,
    run_id: str,
    after: str | None = None,
    limit: int = limit_query(20, 100),
    order: str = "asc",
    status: str | None = None,
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    return evals.list_output_items(
        ctx, principal, eval_id, run_id, after=after, limit=check_limit(limit, 100), order=order, status=status
    )


@router.get("/{eval_id}/runs/{run_id}/output_items/{output_item_id}", response_model=m.OutputItemObject)
@database_read
def get_output_item(
    eval_id: str,
    run_id: str,
    output_item_id: str,
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    return evals.get_output_item(ctx, principal, eval_id, run_id, output_item_id)
