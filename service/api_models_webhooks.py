"""Response bodies of the webhook endpoints API (OpenAI's `client.webhooks`) and Hone's delivery log, for the OpenAPI
document: the same contract as service/api_models.py."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from service.api_models import Exact


class WebhookEndpointObject(Exact):
    id: str
    object: Literal["webhook_endpoint"]
    created_at: int
    updated_at: int
    name: str
    url: str
    event_types: list[str]
    signing_secret_hint: str = Field(description="whsec_... and the secret's last four characters.")


class WebhookEndpointWithSecret(WebhookEndpointObject):
    signing_secret: str = Field(description="whsec_<base64>: answered when the endpoint is made or its secret rotated.")


class WebhookEndpointList(Exact):
    object: Literal["list"]
    data: list[WebhookEndpointObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class WebhookEndpointDeleted(Exact):
    id: str
    object: Literal["webhook_endpoint.deleted"]
    deleted: bool


class WebhookAttempt(Exact):
    attempt: int
    started_at: int
    duration_ms: int
    status_code: int | None = Field(description="The receiver's answer; null when none came (refused, timed out).")
    error: str | None = Field(description="Why the attempt did not deliver; null when it did (2xx).")


class WebhookDeliveryObject(Exact):
    id: str = Field(description="The webhook-id header: the same on every attempt.")
    object: Literal["webhook_endpoint.delivery"]
    webhook_endpoint_id: str
    event_id: str
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    created_at: int
    next_attempt_at: int | None = Field(description="When pending: when the next attempt is due.")
    finished_at: int | None
    attempts: list[WebhookAttempt]


class WebhookDeliveryList(Exact):
    object: Literal["list"]
    data: list[WebhookDeliveryObject]
    first_id: str | None
    last_id: str | None
    has_more: bool
