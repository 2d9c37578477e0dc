"""Response bodies of the Evals API (OpenAI's `client.evals`), for the OpenAPI document: the same contract as
service/api_models.py."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.api_models import Exact


class CustomDataSourceConfigObject(Exact):
    type: Literal["custom"]
    schema_: dict[str, Any] = Field(alias="schema", description="{item: item_schema, sample?: ...} as JSON Schema.")


class EvalObject(Exact):
    object: Literal["eval"]
    id: str
    name: str
    created_at: int
    metadata: dict[str, str] | None
    data_source_config: CustomDataSourceConfigObject
    testing_criteria: list[dict[str, Any]]


class EvalList(Exact):
    object: Literal["list"]
    data: list[EvalObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class EvalDeleted(Exact):
    object: Literal["eval.deleted"]
    deleted: bool
    eval_id: str


class EvalApiError(Exact):
    code: str
    message: str


class ResultCounts(Exact):
    total: int
    passed: int
    failed: int
    errored: int


class PerTestingCriteriaResult(Exact):
    testing_criteria: str
    passed: int
    failed: int


class PerModelUsage(Exact):
    model_name: str
    invocation_count: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int


class EvalRunObject(Exact):
    object: Literal["eval.run"]
    id: str
    eval_id: str
    name: str
    created_at: int
    status: Literal["queued", "in_progress", "completed", "failed", "canceled"]
    model: str
    data_source: dict[str, Any]
    metadata: dict[str, str] | None
    error: EvalApiError | None
    result_counts: ResultCounts
    per_testing_criteria_results: list[PerTestingCriteriaResult]
    per_model_usage: list[PerModelUsage]
    report_url: str


class EvalRunList(Exact):
    object: Literal["list"]
    data: list[EvalRunObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class EvalRunDeleted(Exact):
    object: Literal["eval.run.deleted"]
    deleted: bool
    run_id: str


class OutputItemResult(BaseModel):
    # Open: a result whose grade failed adds `error`, what went wrong.
    model_config = ConfigDict(extra="allow")
    name: str
    type: str
    score: float
    passed: bool
    sample: dict[str, Any] | None


class OutputItemObject(Exact):
    object: Literal["eval.run.output_item"]
    id: str
    run_id: str
    eval_id: str
    created_at: int
    status: Literal["pass", "fail", "error"]
    datasource_item_id: int
    datasource_item: dict[str, Any]
    results: list[OutputItemResult]
    sample: dict[str, Any]


class OutputItemList(Exact):
    object: Literal["list"]
    data: list[OutputItemObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ExternalModelObject(Exact):
    object: Literal["external_model"]
    id: str
    name: str = Field(description="ext:<name>: how eval runs and model graders call it.")
    base_url: str
    model: str
    api_key: str | None = Field(description="The key's last four characters (the key is sealed at rest).")
    created_at: int


class ExternalModelList(Exact):
    object: Literal["list"]
    data: list[ExternalModelObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class ExternalModelDeleted(Exact):
    object: Literal["external_model.deleted"]
    id: str
    deleted: bool
