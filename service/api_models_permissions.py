"""Response bodies of OpenAI's checkpoint permissions routes (service/api/checkpoint_permissions.py), for the
OpenAPI document, as service/api_models.py describes its own."""

from __future__ import annotations

from typing import Literal

from service.api_models import Exact


class CheckpointPermission(Exact):
    """A project's permission to use a tuned model or checkpoint of another project."""

    id: str
    object: Literal["checkpoint.permission"]
    created_at: int
    project_id: str


class CheckpointPermissionList(Exact):
    object: Literal["list"]
    data: list[CheckpointPermission]
    has_more: bool
    first_id: str | None
    last_id: str | None


class CheckpointPermissionDeleted(Exact):
    id: str
    object: Literal["checkpoint.permission"]
    deleted: Literal[True]
