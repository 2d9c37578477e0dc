"""Request bodies of OpenAI's Evals API (`client.evals`, `client.evals.runs`), checked as strictly as graders: what
Hone does not do (stored completions, logs, the Responses API, tools and structured outputs in sampling) is a 400
that says so, never accepted and ignored."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import Field, field_validator, model_validator

from hone_kernel import output_format
from hone_kernel.graders import spec, templates
from hone_kernel.strict import UNION_TAGS, StrictModel
from service.schemas import Metadata

NO_STORED_COMPLETIONS = "Hone keeps no stored completions or logs: use a 'custom' data source config"
UNION_TAGS.update({"custom", "jsonl", "completions", "file_content", "file_id", "template", "item_reference"})


class CustomDataSourceConfig(StrictModel):
    type: Literal["custom"]
    item_schema: dict[str, Any]
    include_sample_schema: bool = False

    @model_validator(mode="before")
    @classmethod
    def _custom_only(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("type") in ("logs", "stored_completions"):
            raise ValueError(NO_STORED_COMPLETIONS)
        return data

    @field_validator("item_schema")
    @classmethod
    def _a_json_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise ValueError(f"item_schema is not a JSON Schema: {exc.message}") from None
        return schema


TestingCriterion = spec.TestingCriterion


class CreateEval(StrictModel):
    name: str | None = Field(default=None, max_length=256)
    metadata: Metadata = None
    data_source_config: CustomDataSourceConfig
    testing_criteria: list[TestingCriterion] = Field(min_length=1, max_length=32)

    @field_validator("testing_criteria")
    @classmethod
    def _unique_names(cls, criteria: list[Any]) -> list[Any]:
        names = [c.name for c in criteria]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"testing criteria need distinct names; repeated: {', '.join(repeated)}")
        return criteria


class UpdateEval(StrictModel):
    name: str | None = Field(default=None, max_length=256)
    metadata: Metadata = None


# --- runs ------------------------------------------------------------------------------------------------------


class SourceRow(StrictModel):
    item: dict[str, Any]
    sample: dict[str, Any] | None = None


class FileContentSource(StrictModel):
    type: Literal["file_content"]
    content: list[SourceRow] = Field(min_length=1)


class FileIdSource(StrictModel):
    type: Literal["file_id"]
    id: str = Field(min_length=1)


def _no_stored_completions(data: Any) -> Any:
    if isinstance(data, dict) and data.get("type") in ("stored_completions", "responses"):
        raise ValueError("Hone keeps no stored completions or responses: use a 'file_content' or 'file_id' source")
    return data


Source = Annotated[FileContentSource | FileIdSource, Field(discriminator="type")]


class JsonlDataSource(StrictModel):
    """Pre-made samples: each row's `sample` is graded as it is."""

    type: Literal["jsonl"]
    source: Source

    @field_validator("source", mode="before")
    @classmethod
    def _stored(cls, source: Any) -> Any:
        return _no_stored_completions(source)


class Template(StrictModel):
    type: Literal["template"]
    template: list[spec.GraderMessage] = Field(min_length=1)


class ItemReference(StrictModel):
    type: Literal["item_reference"]
    item_reference: str = Field(min_length=1)

    @field_validator("item_reference")
    @classmethod
    def _an_item_path(cls, reference: str) -> str:
        namespace, _ = templates.parse_path(reference)
        if namespace != "item":
            raise ValueError("item_reference must name a path in the item, e.g. 'item.input_trajectory'")
        return reference


class RunSamplingParams(StrictModel):
    refused = {
        "reasoning_effort": "Hone's models are not reasoning models",
        "tools": "tool calls are not supported by Hone's endpoints yet",
    }

    max_completion_tokens: int | None = Field(default=None, ge=1, le=32768)
    seed: int | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    reasoning_effort: Any = None
    response_format: dict[str, Any] | None = None  # checked by hone_kernel.output_format; the answer is held to it
    tools: Any = None

    @field_validator("response_format")
    @classmethod
    def _a_format(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        try:
            output_format.parse(value)
        except output_format.FormatError as e:
            raise ValueError(str(e)) from e
        return value


class CompletionsDataSource(StrictModel):
    """Samples `model` (any model the project can call) once per item, from `input_messages`."""

    type: Literal["completions"]
    source: Source
    input_messages: Annotated[Template | ItemReference, Field(discriminator="type")]
    model: str = Field(min_length=1)
    sampling_params: RunSamplingParams | None = None

    @field_validator("source", mode="before")
    @classmethod
    def _stored(cls, source: Any) -> Any:
        return _no_stored_completions(source)


class CreateEvalRun(StrictModel):
    name: str | None = Field(default=None, max_length=256)
    metadata: Metadata = None
    data_source: Annotated[JsonlDataSource | CompletionsDataSource, Field(discriminator="type")]

    @model_validator(mode="before")
    @classmethod
    def _no_responses(cls, data: Any) -> Any:
        source = data.get("data_source") if isinstance(data, dict) else None
        if isinstance(source, dict) and source.get("type") == "responses":
            raise ValueError("Hone has no Responses API: use a 'completions' or 'jsonl' data source")
        return data


class CreateExternalModel(StrictModel):
    """Hone: an OpenAI-compatible endpoint outside Hone, to compare with (eval runs, model graders)."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", description="Called as `ext:<name>`.")
    base_url: str = Field(min_length=1, max_length=1024, description="Its /v1 URL, within HONE_EXTERNAL_MODEL_URLS.")
    model: str = Field(min_length=1, max_length=256, description="Its own name for the model.")
    api_key: str | None = Field(default=None, min_length=1, max_length=4096)
