"""The registry of base models that jobs may tune: a name mapped to a local folder or a Hugging Face id.

Three sources, in order: `hone-tiny` (always; built by the trainer on first use), HONE_BASE_MODELS
(settings), and models an admin registered through /v1/organization/base_models (stored in the database)."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from sqlalchemy import select

from service.db import Database
from service.db.tables import RegisteredBaseModel
from service.errors import InvalidRequest, NotFound, PermissionDenied

TINY_MODEL = "hone-tiny"
# Fixed so that /v1/models answers the same on every start.
_REGISTERED_AT = 1767225600  # 2026-01-01
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,255}$")


@dataclass(frozen=True)
class BaseModel:
    name: str
    source: str  # local folder, Hugging Face id, or "builtin:" for models Hone builds itself
    created: int = _REGISTERED_AT
    origin: str = "settings"  # builtin | settings | admin


class BaseModelRegistry:
    def __init__(self, configured: dict[str, str], db: Database | None = None):
        self._static = {TINY_MODEL: BaseModel(TINY_MODEL, "builtin:hone-tiny", origin="builtin")}
        for name, source in configured.items():
            self._static[name] = BaseModel(name, source)
        self._db = db

    def _registered(self, name: str | None = None) -> list[BaseModel]:
        if self._db is None:
            return []
        with self._db.read() as session:
            stmt = select(RegisteredBaseModel)
            if name is not None:
                stmt = stmt.where(RegisteredBaseModel.name == name)
            rows = session.execute(stmt).scalars().all()
        return [BaseModel(r.name, r.source, r.created_at, "admin") for r in rows]

    def get(self, name: str) -> BaseModel | None:
        if name in self._static:
            return self._static[name]
        if name.startswith("ft:") or not _NAME.match(name):
            return None
        found = self._registered(name)
        return found[0] if found else None

    def all(self) -> list[BaseModel]:
        models = {m.name: m for m in self._registered()} | self._static
        return sorted(models.values(), key=lambda m: m.name)

    # --- admin -------------------------------------------------------------------------

    def register(self, name: str, source: str) -> BaseModel:
        if not _NAME.match(name) or name.startswith("ft:"):
            raise InvalidRequest(f"Invalid base model name {name!r}: use letters, digits, '.', '_', '-' and '/'.",
                                 param="name", code="invalid_value")
        if name in self._static:
            raise PermissionDenied(f"Base model {name!r} is configured in settings or built in; it cannot be "
                                   "changed through the API.", param="name", code="base_model_not_editable")
        now = int(time.time())
        with self._db.write() as session:
            row = session.get(RegisteredBaseModel, name)
            if row is None:
                session.add(RegisteredBaseModel(name=name, source=source, created_at=now))
            else:
                row.source = source
        return self.get(name)

    def unregister(self, name: str) -> None:
        if name in self._static:
            raise PermissionDenied(f"Base model {name!r} is configured in settings or built in; it cannot be "
                                   "deleted through the API.", param="name", code="base_model_not_editable")
        with self._db.write() as session:
            row = session.get(RegisteredBaseModel, name)
            if row is None:
                raise NotFound(f"No such base model: {name}", param="name", code="not_found")
            session.delete(row)

    @staticmethod
    def as_api(model: BaseModel) -> dict:
        return {"id": model.name, "object": "model", "created": model.created, "owned_by": "hone"}

    @staticmethod
    def as_admin_api(model: BaseModel) -> dict:
        return {"id": model.name, "object": "base_model", "created": model.created, "source": model.source,
                "origin": model.origin}
