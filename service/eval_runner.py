"""Runs evals: each run in progress is an asyncio task on the app's event loop that samples its model (for a
`completions` source) and grades each row with the eval's testing criteria, writing an output item per row.

- Bounded: at most `HONE_EVAL_CONCURRENCY` rows of one project are sampled or graded at once, across its runs.
- Survives restarts: output items are written as rows finish (unique per run and row), and a run left
  `in_progress` by a process that stopped is picked up by the next leader, which grades only the rows missing.
- Stops when told: a canceled or deleted run's task stops before its next batch (the domain wakes the runner).
- Counted: `hone_eval_output_items_total{status}`, and `hone_eval_runs{status}` at scrape time."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import Counter
from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import insert, select, update
from starlette.concurrency import run_in_threadpool

from hone_kernel.graders import run as grading
from hone_kernel.graders import spec, templates
from service import eval_data, job_evaluation, metrics
from service.context import AppContext
from service.db.tables import Eval, EvalOutputItem, EvalRun
from service.errors import ErrorCode, excerpt
from service.eval_states import RunStatus, move
from service.grading import Graders
from service.ids import new_id

log = logging.getLogger("hone.evals")
# Any grader: an eval created through the API has testing criteria (checked by eval_schemas: no multi), and a
# reinforcement job's evaluation grades with the job's own grader, which may be multi (service/job_evaluation.py).
CRITERIA = TypeAdapter(list[spec.Grader])
BATCH_PER_SLOT = 4  # rows per batch, per concurrency slot: a batch is written (and cancel checked) at once


class EvalRunner:
    def __init__(self, ctx: AppContext, graders: Graders, loop: asyncio.AbstractEventLoop):
        self.ctx, self.graders, self.loop = ctx, graders, loop
        self.tasks: dict[str, concurrent.futures.Future] = {}  # run id -> its task, on self.loop
        self._slots: dict[str, asyncio.Semaphore] = {}

    # --- the loop's step (a worker thread) -------------------------------------------------------------------

    def tick(self) -> None:
        """Moves job evaluations on, starts queued runs and adopts runs left in progress by a stopped process."""
        job_evaluation.advance(self.ctx)
        now = int(time.time())
        with self.ctx.db.write() as session:
            queued = session.execute(
                select(EvalRun.id).where(EvalRun.status == RunStatus.QUEUED.value).order_by(EvalRun.seq).limit(100)
            ).scalars()
            for run_id in list(queued):
                move(session, run_id, RunStatus.QUEUED, RunStatus.IN_PROGRESS, now)
        with self.ctx.db.read() as session:
            running = list(
                session.execute(select(EvalRun.id).where(EvalRun.status == RunStatus.IN_PROGRESS.value)).scalars()
            )
        for run_id in running:
            task = self.tasks.get(run_id)
            if task is None or task.done():
                self.tasks[run_id] = asyncio.run_coroutine_threadsafe(self._run(run_id), self.loop)
        for run_id in [r for r, t in self.tasks.items() if t.done()]:
            del self.tasks[run_id]

    async def stop(self) -> None:
        """Stops every run's task; the runs stay in progress, for the next leader to finish."""
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()

    # --- one run ---------------------------------------------------------------------------------------------

    async def _run(self, run_id: str) -> None:
        try:
            await self._execute(run_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or an outage: the run fails with a reason, the runner goes on
            log.exception("eval run failed", extra={"run_id": run_id})
            await run_in_threadpool(
                self._finish,
                run_id,
                RunStatus.FAILED,
                {"code": ErrorCode.SERVER_ERROR.value, "message": f"The run stopped: {excerpt(str(exc), 300)}"},
            )

    async def _execute(self, run_id: str) -> None:
        loaded = await run_in_threadpool(self._load, run_id)
        if loaded is None:
            return
        run, ev, graded = loaded
        source = run["data_source"]
        try:
            rows = await run_in_threadpool(
                eval_data.load_rows,
                self.ctx,
                run["project_id"],
                source["source"],
                self.ctx.settings.graders.eval_max_rows,
            )
        except Exception as exc:  # the file went away or cannot be read any more
            message = getattr(exc, "message", None) or str(exc)
            await run_in_threadpool(
                self._finish,
                run_id,
                RunStatus.FAILED,
                {"code": ErrorCode.INVALID_EVAL_DATA.value, "message": excerpt(message, 300)},
            )
            return
        criteria = CRITERIA.validate_python(ev["testing_criteria"])
        env = self.graders.env(run["project_id"])
        tally = Tally.of(graded, [c.name for c in criteria])
        tally.total = len(rows)
        slots = self._slot(run["project_id"])
        todo = [i for i in range(len(rows)) if i not in tally.done]
        batch = BATCH_PER_SLOT * self.ctx.settings.graders.eval_concurrency
        for start in range(0, len(todo), batch):
            outputs = await asyncio.gather(
                *(self._row(i, rows[i], source, criteria, env, slots) for i in todo[start : start + batch])
            )
            for output in outputs:
                tally.add(output)
            if not await run_in_threadpool(self._write, run_id, run, outputs, tally):
                return  # canceled or deleted meanwhile
        await run_in_threadpool(self._finish, run_id, RunStatus.COMPLETED, None, tally)

    def _slot(self, project_id: str) -> asyncio.Semaphore:
        if project_id not in self._slots:
            self._slots[project_id] = asyncio.Semaphore(self.ctx.settings.graders.eval_concurrency)
        return self._slots[project_id]

    async def _row(self, index: int, row: eval_data.Row, source: dict, criteria: list, env, slots) -> dict[str, Any]:
        async with slots:
            if source["type"] == "completions":
                sample_ns, sample = await self._sample(row.item, source, env)
            else:
                sample_ns, sample = premade_sample(row.sample or {})
            results, errored = [], sample.get("error") is not None
            grader_usage: list[tuple[str, dict]] = []  # model graders' calls, for per_model_usage
            if not errored:
                for criterion in criteria:
                    graded = await grading.grade(criterion, sample_ns, row.item, env)
                    errored = errored or graded.failed
                    results.append(result_of(criterion, graded))
                    grader_usage.extend(graded.usage_per_model.items())
        status = "error" if errored else ("pass" if all(r["passed"] for r in results) else "fail")
        metrics.EVAL_OUTPUT_ITEMS.labels(status).inc()
        return {
            "index": index,
            "item": row.item,
            "results": results,
            "sample": sample,
            "status": status,
            "grader_usage": grader_usage,
        }

    async def _sample(self, item: dict, source: dict, env) -> tuple[dict, dict]:
        params = source.get("sampling_params") or {}
        try:
            messages = sampling_messages(item, source["input_messages"])
        except (templates.TemplateError, ValueError) as exc:
            return {}, sample_shape(
                [], "", source["model"], params, error={"code": ErrorCode.INVALID_EVAL_DATA.value, "message": str(exc)}
            )
        chat = {k: params[k] for k in ("temperature", "top_p", "seed") if k in params}
        if "max_completion_tokens" in params:
            chat["max_tokens"] = params["max_completion_tokens"]
        if params.get("response_format") is not None:
            chat["response_format"] = params["response_format"]
        try:
            reply = await env.models.chat(source["model"], messages, chat)
        except grading.ModelCallFailed as exc:
            return {}, sample_shape(
                messages,
                "",
                source["model"],
                params,
                error={"code": ErrorCode.ENDPOINT_ERROR.value, "message": str(exc)},
            )
        sample = sample_shape(messages, reply.text, source["model"], params, reply=reply)
        return {**grading.sample_from_text(reply.text), "model": source["model"]}, sample

    # --- the database (worker threads) ----------------------------------------------------------------------

    def _load(self, run_id: str):
        with self.ctx.db.read() as session:
            run = session.execute(select(EvalRun).where(EvalRun.id == run_id)).scalar()
            if run is None or run.status != RunStatus.IN_PROGRESS.value:
                return None
            ev = session.execute(select(Eval).where(Eval.id == run.eval_id)).scalar()
            if ev is None:
                return None
            graded = session.execute(
                select(
                    EvalOutputItem.datasource_item_id,
                    EvalOutputItem.status,
                    EvalOutputItem.results,
                    EvalOutputItem.sample,
                ).where(EvalOutputItem.run_id == run_id)
            ).all()
            return (
                {"project_id": run.project_id, "eval_id": run.eval_id, "data_source": run.data_source},
                {"testing_criteria": ev.testing_criteria},
                graded,
            )

    def _write(self, run_id: str, run: dict, outputs: list[dict], tally: Tally) -> bool:
        """Writes a batch's output items and the run's counts, if the run is still in progress."""
        now = int(time.time())
        with self.ctx.db.write() as session:
            status = session.execute(select(EvalRun.status).where(EvalRun.id == run_id)).scalar()
            if status != RunStatus.IN_PROGRESS.value:
                return False
            if outputs:
                session.execute(
                    insert(EvalOutputItem),
                    [
                        {
                            "id": new_id("outputitem_"),
                            "run_id": run_id,
                            "eval_id": run["eval_id"],
                            "project_id": run["project_id"],
                            "datasource_item_id": o["index"],
                            "datasource_item": o["item"],
                            "results": o["results"],
                            "sample": o["sample"],
                            "status": o["status"],
                            "created_at": now,
                        }
                        for o in outputs
                    ],
                )
            session.execute(update(EvalRun).where(EvalRun.id == run_id).values(updated_at=now, **tally.columns()))
        return True

    def _finish(self, run_id: str, target: RunStatus, error: dict | None, tally: Tally | None = None) -> None:
        with self.ctx.db.write() as session:
            fields = {"error": error, **(tally.columns() if tally else {})}
            moved = move(session, run_id, RunStatus.IN_PROGRESS, target, int(time.time()), **fields)
        if moved:
            log.info("eval run finished", extra={"run_id": run_id, "status": target.value})


class Tally:
    """A run's result_counts, per_testing_criteria_results and per_model_usage, kept as rows are graded."""

    def __init__(self, criteria: list[str]):
        self.criteria = criteria
        self.done: set[int] = set()
        self.counts: Counter = Counter()
        self.per_criteria: dict[str, Counter] = {name: Counter() for name in criteria}
        self.usage: dict[str, Counter] = {}
        self.total = 0

    @classmethod
    def of(cls, graded, criteria: list[str]) -> Tally:
        tally = cls(criteria)
        for index, status, results, sample in graded:
            tally.add({"index": index, "status": status, "results": results, "sample": sample})
        return tally

    def add(self, output: dict) -> None:
        self.done.add(output["index"])
        self.counts[{"pass": "passed", "fail": "failed"}.get(output["status"], "errored")] += 1
        for result in output["results"]:
            if result["name"] in self.per_criteria and result.get("error") is None:
                self.per_criteria[result["name"]]["passed" if result["passed"] else "failed"] += 1
        sample = output["sample"]
        if sample.get("model") and sample.get("usage"):
            self._use(sample["model"], sample["usage"])
        # Not stored with the item: after a restart, only model graders' calls since then are counted.
        for model, usage in output.get("grader_usage", ()):
            self._use(model, usage)

    def _use(self, model: str, usage: dict) -> None:
        total = self.usage.setdefault(model, Counter())
        total["invocation_count"] += 1
        for key in ("prompt_tokens", "completion_tokens", "total_tokens", "cached_tokens"):
            total[key] += int(usage.get(key) or 0)

    def columns(self) -> dict[str, Any]:
        return {
            "result_counts": {
                "total": max(self.total, len(self.done)),
                "passed": self.counts["passed"],
                "failed": self.counts["failed"],
                "errored": self.counts["errored"],
            },
            "per_testing_criteria_results": [
                {
                    "testing_criteria": n,
                    "passed": self.per_criteria[n]["passed"],
                    "failed": self.per_criteria[n]["failed"],
                }
                for n in self.criteria
            ],
            "per_model_usage": [
                {
                    "model_name": m,
                    **{
                        k: u[k]
                        for k in (
                            "invocation_count",
                            "prompt_tokens",
                            "completion_tokens",
                            "total_tokens",
                            "cached_tokens",
                        )
                    },
                }
                for m, u in self.usage.items()
            ],
        }


# --- shapes of what a row produced ------------------------------------------------------------------------------


def sampling_messages(item: dict, input_messages: dict) -> list[dict[str, Any]]:
    """The chat a row samples: the template rendered with the item, or the item's own messages at a path."""
    if input_messages["type"] == "template":
        namespaces = {"item": item, "sample": {}}
        out = []
        for message in input_messages["template"]:
            content = message["content"]
            parts = content if isinstance(content, list) else [content]
            text = "\n".join(p if isinstance(p, str) else p.get("text", "") for p in parts)
            out.append({"role": message["role"], "content": templates.render(text, namespaces)})
        return out
    _, path = templates.parse_path(input_messages["item_reference"])
    messages = templates.lookup({"item": item}, "item", path)
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and _content_ok(m.get("content")) for m in messages
    ):
        raise ValueError(f"{input_messages['item_reference']} is not a list of {{role, content}} messages")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _content_ok(content: Any) -> bool:
    """Text, or text and image parts (a vision model's rows: the engine checks the images)."""
    if isinstance(content, str):
        return True
    return isinstance(content, list) and all(
        isinstance(p, dict)
        and (
            (p.get("type") == "text" and isinstance(p.get("text"), str))
            or (p.get("type") == "image_url" and isinstance(p.get("image_url"), dict))
        )
        for p in content
    )


def sample_shape(messages, text: str, model: str, params: dict, *, reply=None, error: dict | None = None) -> dict:
    """An output item's `sample`, OpenAI's shape."""
    prompt = reply.prompt_tokens if reply else 0
    completion = reply.completion_tokens if reply else 0
    return {
        "input": messages,
        "output": [{"role": "assistant", "content": text}] if reply else [],
        "finish_reason": (reply.finish_reason or "") if reply else "",
        "model": model,
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "cached_tokens": 0,
        },
        "error": error,
        "temperature": params.get("temperature", 1.0),
        "max_completion_tokens": params.get("max_completion_tokens", 0),
        "top_p": params.get("top_p", 1.0),
        "seed": params.get("seed", 0),
    }


def premade_sample(sample: dict) -> tuple[dict, dict]:
    """A jsonl row's own sample: graded as given (output_json parsed from output_text when absent)."""
    text = sample.get("output_text")
    namespace = dict(sample)
    if isinstance(text, str) and "output_json" not in namespace:
        namespace["output_json"] = grading.sample_from_text(text)["output_json"]
    shape = sample_shape([], text if isinstance(text, str) else "", str(sample.get("model") or ""), {})
    shape["output"] = [{"role": "assistant", "content": text}] if isinstance(text, str) else []
    return namespace, shape


def result_of(criterion: Any, graded: grading.Grade) -> dict[str, Any]:
    """One testing criterion's result on a row: its score and whether it passed (see passes)."""
    result: dict[str, Any] = {
        "name": criterion.name,
        "type": criterion.type,
        "score": graded.reward,
        "passed": not graded.failed and passes(criterion, graded.reward),
        "sample": None,
    }
    if graded.failed:
        result["error"] = graded.error_text()
    return result


def passes(criterion: Any, score: float) -> bool:
    """string_check and label_model pass at 1; text_similarity at its pass_threshold; python and score_model at their
    pass_threshold when given, else only at the top of their range (1 for python)."""
    threshold = getattr(criterion, "pass_threshold", None)
    if threshold is None:
        threshold = criterion.bounds()[1] if criterion.type == "score_model" else 1.0
    return score >= threshold
