"""What a finished job evaluation leaves behind besides the job's own fields: its result file, the aggregates of
each criterion's scores (Vertex's aggregation metrics), and, for a Vertex evaluationConfig, the rows and aggregates
written under its output prefix."""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service import dataset_grants, jobs
from service.context import AppContext
from service.db.tables import EvalOutputItem, File, Job
from service.ids import new_id


def result_file(ctx: AppContext, session: Session, job: Job, summary: dict[str, Any]) -> str:
    key = f"jobs/{job.id}/evaluation.json"
    data = json.dumps(jobs.evaluation_api(summary), indent=2).encode()
    ctx.storage.put_bytes(key, data)
    file = File(
        id=new_id("file-"),
        project_id=job.project_id,
        filename="evaluation.json",
        purpose="fine-tune-results",
        bytes=len(data),
        created_at=int(time.time()),
        status="processed",
        storage_key=key,
    )
    session.add(file)
    return file.id


def aggregate(values: list[float]) -> dict[str, float]:
    """The aggregations Vertex's evaluation reports (its AggregationMetric names) of one criterion's scores."""
    ordered = sorted(values)

    def percentile(p: float) -> float:  # linear between the closest ranks, as numpy's default
        at = (len(ordered) - 1) * p
        low, high = int(at), min(int(at) + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (at - low)

    if not ordered:
        return {}
    return {
        "AVERAGE": round(statistics.fmean(ordered), 6),
        "STANDARD_DEVIATION": round(statistics.pstdev(ordered), 6),
        "VARIANCE": round(statistics.pvariance(ordered), 6),
        "MINIMUM": ordered[0],
        "MAXIMUM": ordered[-1],
        "MEDIAN": round(statistics.median(ordered), 6),
        "PERCENTILE_P90": round(percentile(0.90), 6),
        "PERCENTILE_P95": round(percentile(0.95), 6),
        "PERCENTILE_P99": round(percentile(0.99), 6),
    }


def vertex_output(ctx: AppContext, session: Session, job: Job, ev: dict[str, Any], summary: dict) -> dict[str, Any]:
    """Writes the tuned model's rows and aggregates under the evaluationConfig's output prefix (a granted one)."""
    vertex = dict(ev["vertex"])
    directory = vertex["output_uri_prefix"].rstrip("/") + f"/{job.id}/"
    rows = [
        {
            "datasource_item_id": i,
            "reference": item.get("reference"),
            "scores": {r["name"]: r["score"] for r in results},
        }
        for i, item, results in session.execute(
            select(EvalOutputItem.datasource_item_id, EvalOutputItem.datasource_item, EvalOutputItem.results)
            .where(EvalOutputItem.run_id == ev["runs"]["tuned"])
            .order_by(EvalOutputItem.datasource_item_id)
        ).all()
    ]
    data = {
        "tuning_job": job.id,
        "model": job.fine_tuned_model,
        "aggregates": summary["tuned"]["aggregates"],
        "rows": rows,
    }
    error = dataset_grants.write_under(ctx, directory, "evaluation_results.json", json.dumps(data, indent=2).encode())
    vertex.update(output_directory=directory, output_error=error)
    return vertex
