"""An eval run's rows: from the request (`file_content`) or from a file of the project (`file_id`, one JSON object
`{"item": {...}, "sample": {...}}` a line, as OpenAI's eval files are), each item checked against the eval's
item_schema when the run is created, so that a bad row is a 400 naming its line and field, not a failed run later."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from sqlalchemy import select

from hone_kernel.dataset_lines import dataset_lines
from service.context import AppContext
from service.db.tables import File
from service.errors import ErrorCode, InvalidRequest, excerpt

SOURCE_PARAM = "data_source.source"


@dataclass(frozen=True)
class Row:
    item: dict[str, Any]
    sample: dict[str, Any] | None = None


def _refuse(message: str, param: str, line: int | None = None, field: str | None = None) -> InvalidRequest:
    extra = {k: v for k, v in (("line", line), ("field", field)) if v is not None}
    return InvalidRequest(message, param=param, code=ErrorCode.INVALID_EVAL_DATA, extra=extra)


def load_rows(ctx: AppContext, project_id: str, source: dict[str, Any], max_rows: int) -> list[Row]:
    """The rows of a run's source (as validated by eval_schemas), in order; InvalidRequest naming what is wrong."""
    if source["type"] == "file_content":
        given = [Row(r["item"], r.get("sample")) for r in source["content"]]
        if len(given) > max_rows:
            raise _refuse(f"A run takes at most {max_rows} rows; this one has {len(given)}.", f"{SOURCE_PARAM}.content")
        return given
    file_id, param = source["id"], f"{SOURCE_PARAM}.id"
    with ctx.db.read() as session:
        key = session.execute(
            select(File.storage_key).where(File.id == file_id, File.project_id == project_id)
        ).scalar()
    if key is None:
        raise InvalidRequest(f"No such File object: {excerpt(file_id)}", param=param, code=ErrorCode.NOT_FOUND)
    rows: list[Row] = []
    for number, line in enumerate(dataset_lines(ctx.storage.iter_chunks(key)), start=1):
        if not line.strip():
            continue
        try:
            parsed = json.loads(line)
        except ValueError:
            raise _refuse(f"Line {number} of {excerpt(file_id)} is not JSON.", param, number) from None
        if not isinstance(parsed, dict) or not isinstance(parsed.get("item"), dict):
            raise _refuse(
                f'Line {number}: each line must be {{"item": {{...}}}} (and may have "sample").', param, number, "item"
            )
        unknown = sorted(set(parsed) - {"item", "sample"})
        if unknown:
            raise _refuse(f"Line {number}: unknown key '{excerpt(unknown[0])}'.", param, number, unknown[0])
        if parsed.get("sample") is not None and not isinstance(parsed["sample"], dict):
            raise _refuse(f"Line {number}: 'sample' must be an object.", param, number, "sample")
        rows.append(Row(parsed["item"], parsed.get("sample")))
        if len(rows) > max_rows:
            raise _refuse(f"A run takes at most {max_rows} rows; {excerpt(file_id)} has more.", param)
    if not rows:
        raise _refuse(f"{excerpt(file_id)} has no rows.", param)
    return rows


def check_rows(rows: list[Row], config: dict[str, Any], source: dict[str, Any], needs_sample: bool) -> None:
    """Each item against the eval's item_schema; with pre-made samples (jsonl), each row must carry one."""
    validator = Draft202012Validator(config["item_schema"])
    by_line = source["type"] == "file_id"
    for index, row in enumerate(rows):
        where = f"line {index + 1}" if by_line else f"content[{index}]"
        param = f"{SOURCE_PARAM}.id" if by_line else f"{SOURCE_PARAM}.content[{index}].item"
        error = next(iter(sorted(validator.iter_errors(row.item), key=lambda e: list(e.path))), None)
        if error is not None:
            path = ".".join(str(p) for p in error.path)
            raise _refuse(
                f"The item of {where} does not match the eval's item_schema"
                + (f" at '{excerpt(path)}'" if path else "")
                + f": {excerpt(error.message, 200)}",
                param,
                index + 1 if by_line else None,
                f"item.{path}" if path else "item",
            )
        if needs_sample and row.sample is None:
            raise _refuse(
                f"The row of {where} has no 'sample' to grade (a jsonl data source grades pre-made samples).",
                param,
                index + 1 if by_line else None,
                "sample",
            )
