"""Vertex `evaluationConfig` (a tuning spec's auto-evaluation) as Hone's job evaluation, and its results as the
TuningJob's `evaluateDatasetRuns`.

Hone computes Vertex's computation-based metrics (`exactMatchSpec`, `bleuSpec`, `rougeSpec`) with the graders of
evals (hone_kernel/graders) over the validation dataset (or a held-out slice of the training one), aggregates them
as `aggregationMetrics` asks, and writes the per-row results and the aggregates under `outputConfig`'s
`gcsDestination.outputUriPrefix`, which must lie within the project's dataset grants. Model-judged metrics
(pointwise, pairwise, autoraters) and a different `inferenceGenerationConfig` are refused."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from service.vertex.body import VertexBody

AGGREGATIONS = (
    "AVERAGE",
    "STANDARD_DEVIATION",
    "VARIANCE",
    "MINIMUM",
    "MAXIMUM",
    "MEDIAN",
    "PERCENTILE_P90",
    "PERCENTILE_P95",
    "PERCENTILE_P99",
)
# rougeType -> Hone's metric; google-genai sends the name it was given, lowercased ("rouge_l" -> "rougel")
ROUGE_TYPES = {f"rouge{n}": f"rouge_{n}" for n in range(1, 6)} | {"rougel": "rouge_l"}
# metric kind -> the field of an aggregation result that carries its value (Vertex's AggregationResult)
VALUE_FIELDS = {"exact_match": "exactMatchMetricValue", "bleu": "bleuMetricValue", "rouge": "rougeMetricValue"}
MODEL_JUDGED = "Hone computes exact match, BLEU and ROUGE; model-judged metrics are not supported"


class BleuSpec(VertexBody):
    use_effective_order: bool | None = None

    @field_validator("use_effective_order")
    @classmethod
    def _standard_order(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("useEffectiveOrder is not supported: BLEU is sacreBLEU's sentence BLEU")
        return value


class RougeSpec(VertexBody):
    rouge_type: str
    use_stemmer: bool | None = None
    split_summaries: bool | None = None

    @field_validator("rouge_type")
    @classmethod
    def _known(cls, value: str) -> str:
        if value.lower() not in ROUGE_TYPES:
            raise ValueError("rougeType must be one of rouge1 to rouge5 or rougeL (rougeLsum is not computed)")
        return value.lower()

    @field_validator("use_stemmer", "split_summaries")
    @classmethod
    def _plain(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("not supported: ROUGE is computed without stemming on whole texts")
        return value


class VertexMetric(VertexBody):
    refused = {
        "pointwiseMetricSpec": MODEL_JUDGED,
        "pairwiseMetricSpec": MODEL_JUDGED,
        "llmBasedMetricSpec": MODEL_JUDGED,
        "predefinedMetricSpec": MODEL_JUDGED,
        "computationBasedMetricSpec": "use exactMatchSpec, bleuSpec or rougeSpec",
    }
    aggregation_metrics: list[str] = Field(default_factory=lambda: ["AVERAGE"])
    exact_match_spec: dict[str, Any] | None = None
    bleu_spec: BleuSpec | None = None
    rouge_spec: RougeSpec | None = None

    @field_validator("aggregation_metrics")
    @classmethod
    def _aggregations(cls, values: list[str]) -> list[str]:
        unknown = [v for v in values if v not in AGGREGATIONS]
        if unknown:
            raise ValueError(f"aggregation {unknown[0]!r} is not supported; use {', '.join(AGGREGATIONS)}")
        return values or ["AVERAGE"]

    @field_validator("exact_match_spec")
    @classmethod
    def _empty(cls, value: dict | None) -> dict | None:
        if value:
            raise ValueError("exactMatchSpec takes no fields")
        return value

    @model_validator(mode="after")
    def _one_spec(self) -> VertexMetric:
        given = [s for s in (self.exact_match_spec, self.bleu_spec, self.rouge_spec) if s is not None]
        if len(given) != 1:
            raise ValueError("each metric needs exactly one of exactMatchSpec, bleuSpec and rougeSpec")
        return self

    def criterion(self) -> tuple[str, str, dict[str, Any]]:
        """(its name, its kind, the grader that computes it)."""
        sample, reference = "{{ sample.output_text }}", "{{ item.reference }}"
        if self.exact_match_spec is not None:
            return (
                "exact_match",
                "exact_match",
                {
                    "type": "string_check",
                    "name": "exact_match",
                    "input": sample,
                    "reference": reference,
                    "operation": "eq",
                },
            )
        if self.bleu_spec is not None:
            name, metric = "bleu", "bleu"
        else:
            assert self.rouge_spec is not None
            name, metric = self.rouge_spec.rouge_type, ROUGE_TYPES[self.rouge_spec.rouge_type]
        grader = {
            "type": "text_similarity",
            "name": name,
            "input": sample,
            "reference": reference,
            "evaluation_metric": metric,
            "pass_threshold": 0.5,
        }
        return name, ("bleu" if metric == "bleu" else "rouge"), grader


class GcsDestination(VertexBody):
    output_uri_prefix: str = Field(min_length=1)


class OutputConfig(VertexBody):
    gcs_destination: GcsDestination


class EvaluationConfig(VertexBody):
    refused = {
        "autoraterConfig": "Hone computes exact match, BLEU and ROUGE; no autorater model judges the answers",
        "inferenceGenerationConfig": "the answers are sampled greedily with the job's seed, as Hone's evaluation does",
    }
    metrics: list[VertexMetric] = Field(min_length=1, max_length=16)
    output_config: OutputConfig


def job_evaluation(config: EvaluationConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Hone's `evaluation` request for the job, what the Vertex view keeps: each metric's name, kind and
    aggregations, and the output prefix)."""
    criteria: list[dict[str, Any]] = []
    metrics: list[dict[str, Any]] = []
    for metric in config.metrics:
        name, kind, grader = metric.criterion()
        if name not in {m["name"] for m in metrics}:
            criteria.append(grader)
            metrics.append({"name": name, "kind": kind, "aggregations": metric.aggregation_metrics})
    vertex = {"metrics": metrics, "output_uri_prefix": config.output_config.gcs_destination.output_uri_prefix}
    return {"testing_criteria": criteria}, vertex


def dataset_runs(scope: Any, evaluation: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """Vertex's `evaluateDatasetRuns` of a job whose evaluation came from an evaluationConfig."""
    vertex = (evaluation or {}).get("vertex")
    if not vertex or evaluation is None or evaluation.get("status") not in ("completed", "failed"):
        return None
    run: dict[str, Any] = {"checkpointId": "default"}
    if evaluation.get("runs"):
        run["evaluationRun"] = scope.name("evaluationRuns", evaluation["runs"]["tuned"])
    if evaluation["status"] == "failed" or vertex.get("output_error"):
        run["error"] = {"code": 13, "message": evaluation.get("reason") or vertex.get("output_error")}
        return [run]
    aggregates = ((evaluation.get("results") or {}).get("tuned") or {}).get("aggregates") or {}
    results = []
    for metric in vertex["metrics"]:
        values = aggregates.get(metric["name"]) or {}
        for aggregation in metric["aggregations"]:
            if aggregation in values:
                results.append(
                    {"aggregationMetric": aggregation, VALUE_FIELDS[metric["kind"]]: {"score": values[aggregation]}}
                )
    run["evaluateDatasetResponse"] = {
        "aggregationOutput": {"aggregationResults": results},
        "outputInfo": {"gcsOutputDirectory": vertex.get("output_directory") or vertex["output_uri_prefix"]},
    }
    return [run]
