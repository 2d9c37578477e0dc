"""The base of Vertex request bodies: camelCase or snake_case keys, unknown and refused fields answered 400."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel, to_snake

from hone_kernel.strict import refuse_unknown_keys


class VertexBody(BaseModel):
    # Unknown fields are refused (400 naming the field), not ignored as Vertex ignores what a version does not know:
    # a field Hone drops is a setting its caller believes in and Hone does not honour. Non-finite numbers too.
    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="forbid", allow_inf_nan=False
    )
    # Fields Vertex defines that Hone does not honour (camelCase -> why); both spellings answer 400 "not supported".
    refused: ClassVar[dict[str, str]] = {}

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown(cls, data: Any) -> Any:
        if cls.model_config.get("extra") == "allow":
            return data
        return refuse_unknown_keys(cls, data, _both_spellings(cls.refused))


def _both_spellings(refused: dict[str, str]) -> dict[str, str]:
    return refused | {to_snake(key): why for key, why in refused.items()}
