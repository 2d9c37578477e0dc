"""The registry of base models that jobs may tune: a name mapped to a folder or a Hugging Face id."""

from __future__ import annotations

from dataclasses import dataclass

TINY_MODEL = "hone-tiny"
# Fixed so that /v1/models answers the same on every start.
_REGISTERED_AT = 1767225600  # 2026-01-01


@dataclass(frozen=True)
class BaseModel:
    name: str
    source: str  # local folder, Hugging Face id, or "builtin:" for models Hone builds itself


class BaseModelRegistry:
    def __init__(self, configured: dict[str, str]):
        self._models = {TINY_MODEL: BaseModel(TINY_MODEL, "builtin:hone-tiny")}
        for name, source in configured.items():
            self._models[name] = BaseModel(name, source)

    def get(self, name: str) -> BaseModel | None:
        return self._models.get(name)

    def all(self) -> list[BaseModel]:
        return sorted(self._models.values(), key=lambda m: m.name)

    @staticmethod
    def as_api(model: BaseModel) -> dict:
        return {"id": model.name, "object": "model", "created": _REGISTERED_AT, "owned_by": "hone"}
