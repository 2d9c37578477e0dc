"""The Evals API on the package's tuned model, through the openai SDK unchanged: an eval with a string_check on
the ticket labels, run over a held-out file on the tuned model and on its base; the tuned model passes, the base
does not, and every output item carries its sample and its grade (issue 19's proof)."""

from __future__ import annotations

import time

import pytest

from tests.support import jsonl

# The openai SDK warns that OpenAI is retiring its hosted Evals API (2026-11-30); the SDK's client is what Hone serves.
pytestmark = pytest.mark.filterwarnings("ignore:The Evals API is deprecated:DeprecationWarning")

LABEL = {
    "type": "string_check",
    "name": "label",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.label }}",
    "operation": "eq",
}


def wait_run(client, eval_id: str, run_id: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while True:
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        if run.status in ("completed", "failed", "canceled") or time.monotonic() > deadline:
            return run
        time.sleep(0.5)


def test_tuned_model_passes_the_label_eval_and_its_base_does_not(tuned_model):
    client, held_out = tuned_model["client"], tuned_model["held_out"][:40]
    rows = [{"item": {"messages": r["messages"][:-1], "label": r["messages"][-1]["content"]}} for r in held_out]
    data = client.files.create(file=("held_out.jsonl", jsonl(rows)), purpose="user_data")
    schema = {
        "type": "object",
        "properties": {"messages": {"type": "array"}, "label": {"type": "string"}},
        "required": ["messages", "label"],
    }
    ev = client.evals.create(
        name="ticket labels",
        data_source_config={"type": "custom", "item_schema": schema, "include_sample_schema": True},
        testing_criteria=[LABEL],
    )
    runs = {}
    for model in (tuned_model["job"].fine_tuned_model, "hone-tiny"):
        runs[model] = client.evals.runs.create(
            ev.id,
            name=model,
            data_source={
                "type": "completions",
                "source": {"type": "file_id", "id": data.id},
                "input_messages": {"type": "item_reference", "item_reference": "item.messages"},
                "model": model,
                "sampling_params": {"temperature": 0, "max_completion_tokens": 16, "seed": 1},
            },
        )
    finished = {model: wait_run(client, ev.id, run.id) for model, run in runs.items()}
    share = {}
    for model, run in finished.items():
        assert run.status == "completed", run
        counts = run.result_counts
        assert counts.total == len(rows) and counts.errored == 0, counts
        assert counts.passed + counts.failed == len(rows)
        share[model] = counts.passed / counts.total
        criteria = run.per_testing_criteria_results
        assert [(c.testing_criteria, c.passed) for c in criteria] == [("label", counts.passed)]
        (usage,) = run.per_model_usage
        assert usage.model_name == model and usage.invocation_count == len(rows) and usage.completion_tokens > 0
    tuned, base = share[tuned_model["job"].fine_tuned_model], share["hone-tiny"]
    assert tuned >= 0.9 and base <= 0.2, share

    run = finished[tuned_model["job"].fine_tuned_model]
    items = list(client.evals.runs.output_items.list(run.id, eval_id=ev.id, limit=100))
    assert sorted(i.datasource_item_id for i in items) == list(range(len(rows)))
    for item in items:
        (result,) = item.results
        expected = item.datasource_item["label"]
        answer = item.sample.output[0].content
        assert result.name == "label" and result.passed == (answer == expected) == (item.status == "pass")
        assert item.sample.model == run.model and item.sample.usage.total_tokens > 0
        assert item.sample.input == [type(item.sample.input[0])(**m) for m in item.datasource_item["messages"]]
    failed = list(client.evals.runs.output_items.list(run.id, eval_id=ev.id, status="fail", limit=100))
    assert len(failed) == run.result_counts.failed and all(i.status == "fail" for i in failed)


def test_the_job_finished_with_its_evaluation_against_the_base(tuned_model):
    """The package's job asked for `evaluation` (conftest.py): after training it was measured on 40 rows of its
    validation file, the tuned model next to hone-tiny, with the summary on the job and in its events."""
    client, job = tuned_model["client"], tuned_model["job"]
    evaluation = job.model_extra["evaluation"]
    assert evaluation["status"] == "completed" and evaluation["source"] == "validation_file", evaluation
    tuned, base = evaluation["results"]["tuned"], evaluation["results"]["compare"]
    assert (tuned["model"], base["model"], tuned["total"]) == (job.fine_tuned_model, "hone-tiny", 40)
    assert tuned["score"] >= 0.9 and base["score"] <= 0.2, evaluation
    assert evaluation["improvement"] == round(tuned["score"] - base["score"], 4)
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert any(m.startswith(f"Evaluation: {job.fine_tuned_model} ") for m in messages)
