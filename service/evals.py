"""OpenAI's Evals API for a project: evals, their runs and each run's output items (reads, creates, cancel and
delete). Runs are executed by service/eval_runner.py; creating one only checks and stores it, then wakes the
runner. Every lookup is scoped to the caller's project: another project's eval is a 404 like a missing one."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service import eval_data
from service.auth import ProjectPrincipal
from service.context import AppContext
from service.db.tables import Eval, EvalOutputItem, EvalRun
from service.errors import ErrorCode, InvalidRequest, NotFound, excerpt
from service.eval_schemas import CompletionsDataSource, CreateEval, CreateEvalRun, UpdateEval
from service.eval_states import RunStatus, move
from service.hints import Loop
from service.ids import new_id
from service.pagination import list_envelope, paginate

SAMPLE_SCHEMA = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "choices": {"type": "array"},
        "output_text": {"type": "string"},
        "output_json": {"type": "object"},
        "output_tools": {"type": "array"},
    },
    "required": ["model", "choices"],
}


# --- shapes ----------------------------------------------------------------------------------------------------


def eval_api(row: Eval) -> dict[str, Any]:
    config = row.data_source_config
    properties: dict[str, Any] = {"item": config["item_schema"]}
    if config.get("include_sample_schema"):
        properties["sample"] = SAMPLE_SCHEMA
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    return {
        "object": "eval",
        "id": row.id,
        "name": row.name,
        "created_at": row.created_at,
        "metadata": row.meta,
        "data_source_config": {"type": "custom", "schema": schema},
        "testing_criteria": row.testing_criteria,
    }


def run_api(row: EvalRun, base_url: str) -> dict[str, Any]:
    return {
        "object": "eval.run",
        "id": row.id,
        "eval_id": row.eval_id,
        "name": row.name,
        "created_at": row.created_at,
        "status": row.status,
        "model": row.model,
        "data_source": row.data_source,
        "metadata": row.meta,
        "error": row.error,
        "result_counts": row.result_counts,
        "per_testing_criteria_results": row.per_testing_criteria_results,
        "per_model_usage": row.per_model_usage,
        "report_url": f"{base_url}/v1/evals/{row.eval_id}/runs/{row.id}",
    }


def output_item_api(row: EvalOutputItem) -> dict[str, Any]:
    return {
        "object": "eval.run.output_item",
        "id": row.id,
        "run_id": row.run_id,
        "eval_id": row.eval_id,
        "created_at": row.created_at,
        "status": row.status,
        "datasource_item_id": row.datasource_item_id,
        "datasource_item": row.datasource_item,
        "results": row.results,
        "sample": row.sample,
    }


def empty_counts(criteria: list[dict[str, Any]]) -> tuple[dict[str, int], list[dict[str, Any]]]:
    counts = {"total": 0, "passed": 0, "failed": 0, "errored": 0}
    return counts, [{"testing_criteria": c["name"], "passed": 0, "failed": 0} for c in criteria]


# --- evals -----------------------------------------------------------------------------------------------------


def _eval_row(session: Session, principal: ProjectPrincipal, eval_id: str) -> Eval:
    row = session.execute(select(Eval).where(Eval.id == eval_id, Eval.project_id == principal.project_id)).scalar()
    if row is None:
        raise NotFound(f"No eval found with id '{excerpt(eval_id)}'.", param="eval_id", code=ErrorCode.NOT_FOUND)
    return row


def create_eval(ctx: AppContext, principal: ProjectPrincipal, body: CreateEval) -> dict[str, Any]:
    now = int(time.time())
    row = Eval(
        id=new_id("eval_"),
        project_id=principal.project_id,
        name=body.name or "",
        meta=body.metadata,
        data_source_config=body.data_source_config.model_dump(),
        testing_criteria=[c.model_dump(exclude_none=True) for c in body.testing_criteria],
        created_at=now,
        updated_at=now,
    )
    with ctx.db.write() as session:
        session.add(row)
        session.flush()
        return eval_api(row)


async def create_eval_checked(
    ctx: AppContext, graders: Any, principal: ProjectPrincipal, body: CreateEval
) -> dict[str, Any]:
    """create_eval, once each model grader's model is one the project can call."""
    for index, criterion in enumerate(body.testing_criteria):
        await graders.check_models(principal, criterion, f"testing_criteria[{index}]")
    return await run_in_threadpool(create_eval, ctx, principal, body)


def get_eval(ctx: AppContext, principal: ProjectPrincipal, eval_id: str) -> dict[str, Any]:
    with ctx.db.read() as session:
        return eval_api(_eval_row(session, principal, eval_id))


def update_eval(ctx: AppContext, principal: ProjectPrincipal, eval_id: str, body: UpdateEval) -> dict[str, Any]:
    with ctx.db.write() as session:
        row = _eval_row(session, principal, eval_id)
        if body.name is not None:
            row.name = body.name
        if "metadata" in body.model_fields_set:
            row.meta = body.metadata
        row.updated_at = int(time.time())
        session.flush()
        return eval_api(row)


def list_evals(
    ctx: AppContext, principal: ProjectPrincipal, *, after: str | None, limit: int, order: str, order_by: str
) -> dict[str, Any]:
    _one_of(order, ("asc", "desc"), "order")
    _one_of(order_by, ("created_at", "updated_at"), "order_by")
    with ctx.db.read() as session:
        stmt = select(Eval).where(Eval.project_id == principal.project_id)
        page: Sequence[Eval]
        if order_by == "updated_at":  # no cursor index on it: a page is sorted in full (evals are few)
            ordered = sorted(
                session.execute(stmt).scalars().all(), key=lambda r: (r.updated_at, r.seq), reverse=order == "desc"
            )
            start = next((i + 1 for i, r in enumerate(ordered) if r.id == after), 0) if after else 0
            if after and start == 0:
                raise InvalidRequest(
                    f"Invalid 'after': no object with id '{excerpt(after)}' in this list.",
                    param="after",
                    code=ErrorCode.INVALID_CURSOR,
                )
            page, has_more = ordered[start : start + limit], len(ordered) > start + limit
        else:
            page, has_more = paginate(session, stmt, Eval, after=after, limit=limit, newest_first=order == "desc")
        return list_envelope([eval_api(r) for r in page], has_more, with_ids=True)


def delete_eval(ctx: AppContext, principal: ProjectPrincipal, eval_id: str) -> dict[str, Any]:
    with ctx.db.write() as session:
        row = _eval_row(session, principal, eval_id)
        runs = select(EvalRun.id).where(EvalRun.eval_id == row.id)
        session.execute(delete(EvalOutputItem).where(EvalOutputItem.run_id.in_(runs)))
        session.execute(delete(EvalRun).where(EvalRun.eval_id == row.id))
        session.delete(row)
    return {"object": "eval.deleted", "deleted": True, "eval_id": eval_id}


def _one_of(value: str | None, allowed: tuple[str, ...], param: str) -> None:
    """400 naming `param` unless `value` (None: not given) is one of `allowed`."""
    if value is not None and value not in allowed:
        expected = " or ".join(allowed) if len(allowed) == 2 else f"one of {', '.join(allowed)}"
        raise InvalidRequest(
            f"Invalid '{param}': '{excerpt(value)}'; expected {expected}.", param=param, code=ErrorCode.INVALID_VALUE
        )


# --- runs ------------------------------------------------------------------------------------------------------


def _run_row(session: Session, principal: ProjectPrincipal, eval_id: str, run_id: str) -> EvalRun:
    _eval_row(session, principal, eval_id)
    row = session.execute(
        select(EvalRun).where(
            EvalRun.id == run_id, EvalRun.eval_id == eval_id, EvalRun.project_id == principal.project_id
        )
    ).scalar()
    if row is None:
        raise NotFound(f"No eval run found with id '{excerpt(run_id)}'.", param="run_id", code=ErrorCode.NOT_FOUND)
    return row


async def check_run(
    ctx: AppContext, graders: Any, principal: ProjectPrincipal, eval_id: str, body: CreateEvalRun
) -> None:
    """What a run needs that the body alone does not show: its sampled model is one the project can call."""
    if isinstance(body.data_source, CompletionsDataSource):
        await graders.check_model(principal, body.data_source.model, "data_source.model")


def create_run(ctx: AppContext, principal: ProjectPrincipal, eval_id: str, body: CreateEvalRun) -> dict[str, Any]:
    """Checks the rows against the eval (blocking: a file_id source is read whole) and queues the run."""
    with ctx.db.read() as session:
        ev = _eval_row(session, principal, eval_id)
        config, criteria = ev.data_source_config, ev.testing_criteria
    source = body.data_source.model_dump(exclude_none=True)
    rows = eval_data.load_rows(ctx, principal.project_id, source["source"], ctx.settings.graders.eval_max_rows)
    eval_data.check_rows(rows, config, source["source"], needs_sample=source["type"] == "jsonl")
    counts, per_criteria = empty_counts(criteria)
    now = int(time.time())
    row = EvalRun(
        id=new_id("evalrun_"),
        eval_id=eval_id,
        project_id=principal.project_id,
        name=body.name or "",
        meta=body.metadata,
        data_source=source,
        model=source.get("model", ""),
        status=RunStatus.QUEUED.value,
        error=None,
        result_counts={**counts, "total": len(rows)},
        per_testing_criteria_results=per_criteria,
        per_model_usage=[],
        created_at=now,
        updated_at=now,
    )
    with ctx.db.write() as session:
        _eval_row(session, principal, eval_id)  # not deleted meanwhile
        session.add(row)
        session.flush()
        answer = run_api(row, ctx.settings.resolved_internal_url)
    ctx.hinter.wake(Loop.EVALS)  # the runner picks it up now, not at its next poll
    return answer


def get_run(ctx: AppContext, principal: ProjectPrincipal, eval_id: str, run_id: str) -> dict[str, Any]:
    with ctx.db.read() as session:
        return run_api(_run_row(session, principal, eval_id, run_id), ctx.settings.resolved_internal_url)


def list_runs(
    ctx: AppContext,
    principal: ProjectPrincipal,
    eval_id: str,
    *,
    after: str | None,
    limit: int,
    order: str,
    status: str | None,
) -> dict[str, Any]:
    _one_of(order, ("asc", "desc"), "order")
    _one_of(status, tuple(RunStatus), "status")
    with ctx.db.read() as session:
        _eval_row(session, principal, eval_id)
        stmt = select(EvalRun).where(EvalRun.eval_id == eval_id, EvalRun.project_id == principal.project_id)
        if status is not None:
            stmt = stmt.where(EvalRun.status == status)
        rows, has_more = paginate(session, stmt, EvalRun, after=after, limit=limit, newest_first=order == "desc")
        base = ctx.settings.resolved_internal_url
        return list_envelope([run_api(r, base) for r in rows], has_more, with_ids=True)


def cancel_run(ctx: AppContext, principal: ProjectPrincipal, eval_id: str, run_id: str) -> dict[str, Any]:
    with ctx.db.write() as session:
        row = _run_row(session, principal, eval_id, run_id)
        current = RunStatus(row.status)
        if not move(session, run_id, current, RunStatus.CANCELED, int(time.time())):
            raise InvalidRequest(
                f"Eval run {run_id} changed while it was being canceled; retry.",
                param="run_id",
                code=ErrorCode.CONCURRENT_UPDATE,
            )
        session.expire(row)
        answer = run_api(row, ctx.settings.resolved_internal_url)
    ctx.hinter.wake(Loop.EVALS)  # the runner stops its items now
    return answer


def delete_run(ctx: AppContext, principal: ProjectPrincipal, eval_id: str, run_id: str) -> dict[str, Any]:
    with ctx.db.write() as session:
        row = _run_row(session, principal, eval_id, run_id)
        session.execute(delete(EvalOutputItem).where(EvalOutputItem.run_id == row.id))
        session.delete(row)
    ctx.hinter.wake(Loop.EVALS)
    return {"object": "eval.run.deleted", "deleted": True, "run_id": run_id}


# --- output items ----------------------------------------------------------------------------------------------


def list_output_items(
    ctx: AppContext,
    principal: ProjectPrincipal,
    eval_id: str,
    run_id: str,
    *,
    after: str | None,
    limit: int,
    order: str,
    status: str | None,
) -> dict[str, Any]:
    _one_of(order, ("asc", "desc"), "order")
    _one_of(status, ("pass", "fail"), "status")
    with ctx.db.read() as session:
        _run_row(session, principal, eval_id, run_id)
        stmt = select(EvalOutputItem).where(EvalOutputItem.run_id == run_id)
        if status is not None:
            stmt = stmt.where(EvalOutputItem.status == status)
        rows, has_more = paginate(session, stmt, EvalOutputItem, after=after, limit=limit, newest_first=order == "desc")
        return list_envelope([output_item_api(r) for r in rows], has_more, with_ids=True)


def get_output_item(
    ctx: AppContext, principal: ProjectPrincipal, eval_id: str, run_id: str, item_id: str
) -> dict[str, Any]:
    with ctx.db.read() as session:
        _run_row(session, principal, eval_id, run_id)
        row = session.execute(
            select(EvalOutputItem).where(EvalOutputItem.id == item_id, EvalOutputItem.run_id == run_id)
        ).scalar()
        if row is None:
            raise NotFound(
                f"No output item found with id '{excerpt(item_id)}'.", param="output_item_id", code=ErrorCode.NOT_FOUND
            )
        return output_item_api(row)
