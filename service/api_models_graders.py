"""Response bodies of the graders routes (OpenAI's `fine_tuning.alpha.graders`), for the OpenAPI document: the
same contract as service/api_models.py."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from hone_kernel.graders.spec import Grader
from service.api_models import Exact


class GraderErrors(BaseModel):
    # Open: a failed template adds `other_error_details`, naming the variable.
    model_config = ConfigDict(extra="allow")
    formula_parse_error: bool
    invalid_variable_error: bool
    model_grader_parse_error: bool
    model_grader_refusal_error: bool
    model_grader_server_error: bool
    model_grader_server_error_details: str | None
    other_error: bool
    python_grader_runtime_error: bool
    python_grader_runtime_error_details: str | None
    python_grader_server_error: bool
    python_grader_server_error_type: str | None
    sample_parse_error: bool
    truncated_observation_error: bool
    unresponsive_reward_error: bool


class GraderRunMetadata(Exact):
    name: str
    type: str
    errors: GraderErrors
    execution_time: float
    scores: dict[str, Any]
    token_usage: int | None
    sampled_model_name: str | None


class GraderRunResponse(Exact):
    reward: float
    metadata: GraderRunMetadata
    sub_rewards: dict[str, Any]
    model_grader_token_usage_per_model: dict[str, Any]


class GraderValidateResponse(Exact):
    grader: Grader
