"""Request models that refuse what they do not know: a key the model lacks, or one it knows but Hone does not
honour, is an error naming that key (the API answers 400 with its full path), never stored and ignored.

Shared by the control plane's request bodies (service/schemas.py) and the graders (hone_kernel/graders), which the
trainer reads too."""

from __future__ import annotations

import difflib
import functools
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic_core import PydanticCustomError


@functools.cache
def _known_keys(model: type[BaseModel]) -> frozenset[str]:
    keys = set()
    for name, info in model.model_fields.items():
        keys |= {name, info.alias or name}
    return frozenset(keys)


def refuse_unknown_keys(model: type[BaseModel], data: Any, refused: dict[str, str]) -> Any:
    """Refuses a key the model does not know (with "did you mean" for a near miss) and a key it knows but Hone does
    not honour (`refused`: key -> why). The error carries the key in its context, so that the envelope names the
    full path (`method.supervised.hyperparameters.lora_rnk`) even though the model itself is the error's location."""
    if not isinstance(data, dict):
        return data
    known = _known_keys(model)
    for key in data:
        if key in refused:
            raise PydanticCustomError("unsupported_field", "{reason}", {"field": key, "reason": refused[key]})
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise PydanticCustomError("unknown_field", "unrecognized field{hint}", {"field": key, "hint": hint})
    return data


class StrictModel(BaseModel):
    """Unknown keys and non-finite numbers are refused, and nothing is coerced (`false` is no 0.0, `"1"` no 1);
    `refused` names known keys Hone does not honour."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)
    refused: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown(cls, data: Any) -> Any:
        return refuse_unknown_keys(cls, data, cls.refused)


# The `type` values of the tagged unions in request bodies (graders, eval data sources): pydantic puts the tag in
# an error's location (`grader.string_check.operation`), which no request ever wrote. Modules that define such
# unions register their tags here.
UNION_TAGS: set[str] = set()


def without_union_tags(loc: tuple) -> tuple:
    """A validation error's location as the request wrote it: `grader.string_check.operation` -> `grader.operation`,
    `testing_criteria.0.python.source` -> `testing_criteria.0.source`. A key of a map of graders that happens to be
    a tag (`graders.python`) stays: the tag is never the last part, nor right after `graders`."""
    out: list = []
    for i, part in enumerate(loc):
        if part in UNION_TAGS and i + 1 < len(loc) and (i == 0 or loc[i - 1] != "graders"):
            continue
        out.append(part)
    return tuple(out)
