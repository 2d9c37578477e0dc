"""Response models of the Stored Completions API (service/stored_completions.py), for the OpenAPI document."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.gateway_models import ChatCompletion


class StoredCompletion(ChatCompletion):
    metadata: dict[str, str] = Field(default_factory=dict)


class StoredCompletionList(BaseModel):
    object: Literal["list"]
    data: list[StoredCompletion]
    first_id: str | None
    last_id: str | None
    has_more: bool


class StoredMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    role: str
    content: str | None
    name: str | None = None
    content_parts: list[dict[str, Any]] | None = None


class StoredMessageList(BaseModel):
    object: Literal["list"]
    data: list[StoredMessage]
    first_id: str | None
    last_id: str | None
    has_more: bool


class StoredCompletionDeleted(BaseModel):
    object: Literal["chat.completion.deleted"]
    id: str
    deleted: bool
