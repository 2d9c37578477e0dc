"""The rows a job's evaluation asks both models (service/job_evaluation.py), and what their items hold.

A line of a chat-like training format is a row `{"messages": the prompt, "reference": the answer trained on}`
(`prompt_and_reference`, which the trainer reads lines with too), graded by default with an exact match of the answer
with `{{item.reference}}`. A reinforcement job's line (`openai_reinforcement`: a prompt and the fields its grader
reads) has no answer: its row is the whole line, as the job's grader read it in training (`{{item.label}}`), with
its messages as the prompt (content parts joined to text, as the trainer renders them), and the default criterion
is the job's grader. Rows are the held-out lines (0-based among non-blank lines, as `FileRef.exclude_examples`), or
the first `max_rows` lines that make a row."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import select

from hone_kernel.dataset_lines import dataset_lines
from hone_kernel.dataset_messages import prompt_and_reference
from hone_kernel.dataset_prompts import prompt_messages
from hone_kernel.graders import spec as grader_spec
from hone_kernel.graders import templates
from service import image_refs
from service.auth import ProjectPrincipal
from service.context import AppContext
from service.db.tables import File
from service.errors import ErrorCode, InvalidRequest, excerpt
from service.schemas import CreateFineTuningJob

EVALUABLE_FORMATS = ("openai_chat", "openai_preference", "vertex_gemini", "vertex_legacy", "pairs")
PROMPTS = "openai_reinforcement"  # a reinforcement job's rows: prompts, graded by the job's grader
EXACT_MATCH = {
    "type": "string_check",
    "name": "exact_match",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.reference }}",
    "operation": "eq",
}
ITEM_SCHEMA = {
    "type": "object",
    "properties": {"messages": {"type": "array"}, "reference": {"type": "string"}},
    "required": ["messages", "reference"],
}


def refusal(fmt: str | None, method_type: str) -> str | None:
    """Why rows of a file in `fmt` cannot evaluate a job of `method_type`; None when they can."""
    if method_type == "reinforcement":
        if fmt == PROMPTS:
            return None
        return (
            f"in the {fmt} format; a reinforcement job is evaluated on prompts in its own format ({PROMPTS}), "
            "graded by its grader (or the testing_criteria given)"
        )
    if fmt in EVALUABLE_FORMATS:
        return None
    if fmt == PROMPTS:
        return (
            f"in the {PROMPTS} format: prompts, with no answer to compare with. Only a reinforcement job, whose "
            f"grader scores answers, is evaluated on prompts; evaluation needs one of {', '.join(EVALUABLE_FORMATS)}"
        )
    return f"in the {fmt} format, which has no answer to compare with; evaluation needs one of {', '.join(EVALUABLE_FORMATS)}"


def item_schema(prompts: bool, criteria: list[dict[str, Any]]) -> dict[str, Any]:
    """The eval's item_schema: reference rows', or for prompt rows their messages and the top-level fields the
    criteria read."""
    if not prompts:
        return ITEM_SCHEMA
    fields = dict.fromkeys(str(path[0]) for _, _, path in _item_paths(criteria) if path and isinstance(path[0], str))
    return {"type": "object", "properties": {"messages": {"type": "array"}}, "required": ["messages", *fields]}


def row_of(line: dict[str, Any], fmt: str) -> dict[str, Any] | None:
    """A dataset line as an evaluation row (an eval item); None when it has nothing to ask."""
    if fmt == PROMPTS:
        return {**line, "messages": prompt_messages(line)}
    pair = prompt_and_reference(line, fmt)
    return None if pair is None else {"messages": pair[0], "reference": pair[1]}


def selected_lines(lines: Iterable[bytes], holdout: list[int] | None) -> Iterator[tuple[int, bytes]]:
    """(line number, 1-based with blank lines counted as the validator numbers them; line) of the non-blank lines
    an evaluation may use: the held-out ones, or all in order."""
    wanted = set(holdout) if holdout else None
    last = max(wanted) if wanted else None
    ordinal = -1
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        ordinal += 1
        if last is not None and ordinal > last:
            return
        if wanted is None or ordinal in wanted:
            yield number, line


def rows_of(lines: Iterable[bytes], fmt: str, holdout: list[int] | None, max_rows: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for _, line in selected_lines(lines, holdout):
        row = row_of(json.loads(line), fmt)
        if row is not None:
            rows.append(row)
        if len(rows) >= max_rows:
            break
    return rows


def read_rows(ctx: AppContext, ev: dict[str, Any]) -> list[dict[str, Any]]:
    """The evaluation's rows, read from its file (outside any write transaction: storage may be slow)."""
    with ctx.db.read() as session:
        row = session.execute(
            select(File.storage_key, File.dataset_format, File.dataset_media).where(File.id == ev["file"])
        ).one()
    lines = image_refs.inlined_lines(ctx, row.storage_key, row.dataset_media)  # images as the engine takes them
    return rows_of(lines, row.dataset_format, ev.get("holdout"), ev["max_rows"])


# --- at creation: the item fields a reinforcement job's criteria read --------------------------------------------


def rows_file(body: CreateFineTuningJob) -> tuple[str, str]:
    """(source, file id) of the evaluation's rows: its own file, the validation file, or a slice of the training
    file held out."""
    assert body.evaluation is not None
    if body.evaluation.file != "auto":
        return "file", body.evaluation.file
    if body.validation_file is not None:
        return "validation_file", body.validation_file
    return "holdout", body.training_file


def _item_paths(criteria: list[dict[str, Any]]) -> list[tuple[int, str, list[str | int]]]:
    """(criterion's index, variable as written, path in the item) of every item.* variable the criteria read."""
    found = []
    for index, criterion in enumerate(criteria):
        for ref in grader_spec.item_references(grader_spec.parse(criterion)):
            found.append((index, ref, templates.parse_path(ref)[1]))
    return found


def check_item_fields(ctx: AppContext, principal: ProjectPrincipal, body: CreateFineTuningJob, method: dict) -> None:
    """For a reinforcement job: 400 naming the field when a row of its evaluation lacks an `item.*` variable the
    criteria read (its testing_criteria; its grader over a file of its own, since the validation loop checks the
    training and validation files for it). Read before the job's write transaction. The rows of a held-out slice
    are any lines of the training file (which ones depends on the seed): all are read; else the first max_rows."""
    asked = body.evaluation
    if asked is None or method["type"] != "reinforcement":
        return
    source, file_id = rows_file(body)
    if asked.testing_criteria:
        criteria, param = [c.model_dump(exclude_none=True) for c in asked.testing_criteria], "testing_criteria"
    elif source == "file":
        criteria, param = [method["reinforcement"]["grader"]], "file"
    else:
        return
    paths = _item_paths(criteria)
    if not paths:
        return
    with ctx.db.read() as session:
        file = session.execute(
            select(File.storage_key, File.dataset_format, File.status).where(
                File.id == file_id, File.project_id == principal.project_id
            )
        ).first()
    if file is None or file.status != "processed" or file.dataset_format != PROMPTS:
        return  # plan (or the job's own file checks) says what is wrong with it
    rows = 0
    for number, line in selected_lines(dataset_lines(ctx.storage.iter_chunks(file.storage_key)), None):
        item = row_of(json.loads(line), PROMPTS)
        for index, ref, path in paths:
            try:
                templates.lookup({"item": item}, "item", path)
            except templates.TemplateError:
                where = f"testing_criteria[{index}]" if param == "testing_criteria" else "file"
                reader = (
                    f"testing criterion '{excerpt(criteria[index]['name'])}'"
                    if param == "testing_criteria"
                    else "job's grader"
                )
                raise InvalidRequest(
                    f"The evaluation's {reader} reads {{{{{ref}}}}}, which line {number} of {excerpt(file_id)} "
                    f"does not have (its rows are the file's lines, each graded as item.*).",
                    param=f"evaluation.{where}",
                    code=ErrorCode.INVALID_VALUE,
                ) from None
        rows += 1
        if source != "holdout" and rows >= asked.max_rows:
            return
