"""Response bodies of the Vertex-compatible routes (proto3 JSON: camelCase, unset fields left out, int64 as
strings), for the OpenAPI document only; service/vertex builds the dicts. Field names are the wire's."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.api_models import Exact, absent_or

JobState = Literal[
    "JOB_STATE_UNSPECIFIED",
    "JOB_STATE_QUEUED",
    "JOB_STATE_PENDING",
    "JOB_STATE_RUNNING",
    "JOB_STATE_SUCCEEDED",
    "JOB_STATE_FAILED",
    "JOB_STATE_CANCELLING",
    "JOB_STATE_CANCELLED",
    "JOB_STATE_PAUSED",
    "JOB_STATE_EXPIRED",
    "JOB_STATE_UPDATING",
    "JOB_STATE_PARTIALLY_SUCCEEDED",
]
Int64 = str  # proto3 JSON writes int64 as a string


class GoogleErrorDetail(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)
    type: str = Field(alias="@type", description="type.googleapis.com/google.rpc.BadRequest or ErrorInfo")


class GoogleError(Exact):
    code: int = Field(description="The HTTP status.")
    message: str
    status: str = Field(description="google.rpc.Code's name: INVALID_ARGUMENT, NOT_FOUND, ...")
    details: list[GoogleErrorDetail]


class GoogleErrorEnvelope(Exact):
    """Google's error envelope (google.rpc.Status): every 4xx and 5xx of the Vertex-compatible routes."""

    error: GoogleError


class TuningHyperParameters(Exact):
    epochCount: Int64 = absent_or()
    learningRateMultiplier: float = absent_or()
    adapterSize: str = absent_or()
    batchSize: Int64 = absent_or()
    beta: float = absent_or()


class TuningSpec(Exact):
    trainingDatasetUri: str
    validationDatasetUri: str = absent_or()
    hyperParameters: TuningHyperParameters
    exportLastCheckpointOnly: bool = absent_or()
    evaluationConfig: dict[str, Any] = absent_or("As given: metrics, outputConfig.")


class DistillationTuningSpec(Exact):
    """Hone's `distillation`: the teacher's answers to the prompts train the student (baseModel) with the SFT loss."""

    promptDatasetUri: str
    validationDatasetUri: str = absent_or()
    baseTeacherModel: str = absent_or("The teacher as given, or as Hone names it: a base, ft: or ext: model.")
    tunedTeacherModelSource: str = absent_or("The teacher as given: a tuned model's name.")
    hyperParameters: TuningHyperParameters
    exportLastCheckpointOnly: bool = absent_or()


class TuningError(Exact):
    code: int = Field(description="google.rpc.Code: 1 cancelled, 3 invalid argument, 13 internal.")
    message: str


class TuningJobMetadata(Exact):
    completedStepCount: Int64
    completedEpochCount: Int64 = absent_or()


class TunedModelCheckpoint(Exact):
    checkpointId: str
    step: Int64
    epoch: Int64 = absent_or()
    endpoint: str = absent_or()


class TunedModel(Exact):
    model: str
    endpoint: str = absent_or()
    checkpoints: list[TunedModelCheckpoint] = absent_or()


class DataStats(Exact):
    tuningDatasetExampleCount: Int64 = absent_or()
    totalBillableTokenCount: Int64 = absent_or()
    tuningStepCount: Int64 = absent_or()


class DatasetStats(Exact):
    tuningDatasetExampleCount: Int64 = absent_or()
    tuningStepCount: Int64 = absent_or()


class DistillationDataStats(Exact):
    trainingDatasetStats: DatasetStats


class TuningDataStats(Exact):
    supervisedTuningDataStats: DataStats = absent_or()
    preferenceOptimizationDataStats: DataStats = absent_or()
    distillationDataStats: DistillationDataStats = absent_or("The prompt dataset's (the teacher's answers uncounted).")


class TuningJob(Exact):
    name: str = Field(description="projects/{project}/locations/{location}/tuningJobs/{id}")
    baseModel: str = absent_or()
    preTunedModel: dict[str, Any] = absent_or("A continued job's source, with its root baseModel.")
    tunedModelDisplayName: str = absent_or()
    description: str = absent_or()
    labels: dict[str, str] = absent_or()
    supervisedTuningSpec: TuningSpec = absent_or()
    preferenceOptimizationSpec: TuningSpec = absent_or()
    distillationSpec: DistillationTuningSpec = absent_or()
    state: JobState
    tuningJobState: str = absent_or("v1beta1's sub-state while the job has not ended.")
    createTime: str
    startTime: str = absent_or()
    endTime: str = absent_or()
    updateTime: str
    error: TuningError = absent_or()
    tuningJobMetadata: TuningJobMetadata = absent_or()
    tunedModel: TunedModel = absent_or()
    tuningDataStats: TuningDataStats = absent_or()
    evaluateDatasetRuns: list[dict[str, Any]] = absent_or(
        "After an evaluationConfig's evaluation: evaluationRun, checkpointId, and evaluateDatasetResponse "
        "(aggregationOutput.aggregationResults, outputInfo.gcsOutputDirectory) or error."
    )


class TuningJobList(Exact):
    tuningJobs: list[TuningJob] = absent_or()
    nextPageToken: str = absent_or()


class Empty(Exact):
    """google.protobuf.Empty."""


class DeployedModel(Exact):
    id: str
    displayName: str
    createTime: str
    model: str = absent_or()
    checkpointId: str = absent_or()


class VertexEndpoint(Exact):
    name: str
    displayName: str
    deployedModels: list[DeployedModel]
    trafficSplit: dict[str, int]
    createTime: str
    updateTime: str


class ResponsePart(Exact):
    text: str


class ResponseContent(Exact):
    role: Literal["model"]
    parts: list[ResponsePart]


class Candidate(Exact):
    content: ResponseContent
    index: int
    finishReason: Literal["STOP", "MAX_TOKENS", "SAFETY", "OTHER"] = absent_or()


class UsageMetadata(Exact):
    promptTokenCount: int
    candidatesTokenCount: int
    totalTokenCount: int
    trafficType: Literal["ON_DEMAND"]


class GenerateContentResponse(Exact):
    """One answer; streamGenerateContent sends a sequence of them (SSE `data:` events with alt=sse, else a JSON
    array), the last one with the finishReason and usageMetadata."""

    candidates: list[Candidate]
    usageMetadata: UsageMetadata = absent_or()
    modelVersion: str
    createTime: str = absent_or()
    responseId: str = absent_or()


class CountTokensResponse(Exact):
    totalTokens: int
