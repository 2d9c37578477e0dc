"""Request bodies of the webhook endpoints API (OpenAI's `client.webhooks`): strict, as every request model."""

from __future__ import annotations

from pydantic import Field

from hone_kernel.strict import StrictModel


class CreateWebhookEndpoint(StrictModel):
    name: str = Field(min_length=1, max_length=256, description="A human-readable name for the endpoint.")
    url: str = Field(min_length=1, max_length=2048, description="The http(s) URL that receives deliveries.")
    event_types: list[str] = Field(
        max_length=16, description="The event types delivered to it (Hone sends the fine-tuning and eval run ones)."
    )


class UpdateWebhookEndpoint(StrictModel):
    name: str | None = Field(default=None, min_length=1, max_length=256)
    url: str | None = Field(default=None, min_length=1, max_length=2048)
    event_types: list[str] | None = Field(default=None, max_length=16, description="The complete set, replacing it.")
