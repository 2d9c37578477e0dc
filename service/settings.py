"""All control-plane settings, read once from `HONE_*` environment variables."""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HONE_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8000
    data_dir: Path = Path("./.hone")
    database_url: str | None = None  # default: SQLite file in data_dir
    storage_url: str | None = None  # default: file:// folder in data_dir
    s3_endpoint_url: str | None = None  # else boto3 reads AWS_ENDPOINT_URL itself
    admin_api_key: str | None = None  # default: generated once, kept in data_dir
    executor: str = "local"
    inference_engine: str = "auto"

    organization_id: str = "org-hone"
    # name -> local folder or Hugging Face id, as JSON: {"acme/llama": "/models/llama"}
    base_models: dict[str, str] = Field(default_factory=dict)

    max_file_bytes: int = 512 * 1024 * 1024
    max_line_bytes: int = 4 * 1024 * 1024
    min_training_examples: int = 10
    max_reported_errors: int = 20
    result_files_base64: bool = True  # OpenAI serves result CSVs base64-encoded

    key_cache_ttl_s: float = 5.0  # how long another replica may still accept a revoked key
    auto_migrate: bool = True
    log_level: str = "INFO"
    graceful_shutdown_s: int = 10
    job_validation_poll_s: float = 2.0
    file_expiry_poll_s: float = 60.0

    @field_validator("base_models", mode="before")
    @classmethod
    def _parse_base_models(cls, value):
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'hone.db').resolve()}"

    @cached_property
    def resolved_storage_url(self) -> str:
        if self.storage_url:
            return self.storage_url
        return (self.data_dir / "blobs").resolve().as_uri()
