"""OpenAI's Evals API through the real openai SDK (`client.evals`), on both backends: evals and their runs over
pre-made samples (jsonl), output items, filters, update and delete, refusals that name the field, and another
project's evals out of reach. Runs that sample a model (completions), cancel, a control-plane restart in the middle
of a run and the Prometheus series use a server whose engines are the FAKE engine (tests/fake_engine: it answers
"answer base" for hone-tiny); the real tuned model's eval is tests/tuned_tickets/test_evals.py."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.support import FAKE_ENGINE_PYTHON, HoneServer, jsonl, wait_endpoint, wait_for

# The openai SDK warns that OpenAI is retiring its hosted Evals API (2026-11-30); the SDK's client is what Hone serves.
pytestmark = pytest.mark.filterwarnings("ignore:The Evals API is deprecated:DeprecationWarning")

SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
LABEL = {
    "type": "string_check",
    "name": "label",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.label }}",
    "operation": "eq",
}
CLOSE = {
    "type": "text_similarity",
    "name": "close",
    "input": "{{ sample.output_text }}",
    "reference": "{{ item.label }}",
    "evaluation_metric": "fuzzy_match",
    "pass_threshold": 0.8,
}


def make_eval(client, criteria=(LABEL, CLOSE), name="labels"):
    return client.evals.create(
        name=name,
        data_source_config={"type": "custom", "item_schema": SCHEMA, "include_sample_schema": True},
        testing_criteria=list(criteria),
        metadata={"team": "support"},
    )


def premade(*pairs: tuple[str, str]) -> dict:
    content = [{"item": {"label": label}, "sample": {"output_text": answer}} for label, answer in pairs]
    return {"type": "jsonl", "source": {"type": "file_content", "content": content}}


def wait_run(client, eval_id: str, run_id: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        run = client.evals.runs.retrieve(run_id, eval_id=eval_id)
        if run.status in ("completed", "failed", "canceled"):
            return run
        assert time.monotonic() < deadline, run
        time.sleep(0.1)


def test_an_eval_runs_premade_samples_and_counts_each_criterion(client):
    ev = make_eval(client)
    assert ev.object == "eval" and ev.data_source_config.type == "custom"
    assert ev.data_source_config.schema_["properties"]["item"] == SCHEMA
    run = client.evals.runs.create(
        ev.id,
        name="first",
        data_source=premade(("Billing", "Billing"), ("Billing", "billing"), ("Shipping", "Refunds")),
    )
    assert run.status == "queued" and run.result_counts.total == 3
    run = wait_run(client, ev.id, run.id)
    assert run.status == "completed", run.error
    assert (run.result_counts.passed, run.result_counts.failed, run.result_counts.errored) == (1, 2, 0)
    per = {c.testing_criteria: (c.passed, c.failed) for c in run.per_testing_criteria_results}
    assert per == {"label": (1, 2), "close": (2, 1)}  # "billing" is close to "Billing", not equal
    items = list(client.evals.runs.output_items.list(run.id, eval_id=ev.id))
    assert [i.datasource_item_id for i in items] == [0, 1, 2]
    assert [i.status for i in items] == ["pass", "fail", "fail"]
    assert items[1].results[0].name == "label" and items[1].results[0].score == 0.0
    assert items[1].sample.output[0].content == "billing"
    assert client.evals.runs.output_items.retrieve(items[0].id, eval_id=ev.id, run_id=run.id).id == items[0].id
    passed = list(client.evals.runs.output_items.list(run.id, eval_id=ev.id, status="pass"))
    assert [i.id for i in passed] == [items[0].id]
    newest = list(client.evals.runs.output_items.list(run.id, eval_id=ev.id, order="desc"))
    assert [i.id for i in newest] == [i.id for i in reversed(items)]


def test_runs_are_listed_filtered_and_deleted(client):
    ev = make_eval(client)
    first = wait_run(client, ev.id, client.evals.runs.create(ev.id, data_source=premade(("a", "a"))).id)
    second = wait_run(client, ev.id, client.evals.runs.create(ev.id, data_source=premade(("a", "b"))).id)
    assert [r.id for r in client.evals.runs.list(ev.id)] == [first.id, second.id]
    assert [r.id for r in client.evals.runs.list(ev.id, order="desc")] == [second.id, first.id]
    assert [r.id for r in client.evals.runs.list(ev.id, status="queued")] == []
    deleted = client.evals.runs.delete(first.id, eval_id=ev.id)
    assert deleted.deleted and deleted.run_id == first.id
    with pytest.raises(openai.NotFoundError):
        client.evals.runs.retrieve(first.id, eval_id=ev.id)
    with pytest.raises(openai.BadRequestError) as err:  # a finished run cannot be canceled
        client.evals.runs.cancel(second.id, eval_id=ev.id)
    assert err.value.body["code"] == "invalid_run_status"


def test_evals_are_updated_listed_and_deleted(client):
    first, second = make_eval(client, name="one"), make_eval(client, name="two")
    time.sleep(1.1)  # updated_at counts seconds
    updated = client.evals.update(first.id, name="renamed", metadata={"v": "2"})
    assert (updated.name, updated.metadata) == ("renamed", {"v": "2"})
    assert client.evals.retrieve(first.id).name == "renamed"
    listed = [e.id for e in client.evals.list(limit=100)]
    assert listed.index(first.id) < listed.index(second.id)
    assert [e.id for e in client.evals.list(order_by="updated_at", order="desc", limit=1).data] == [first.id]
    run = client.evals.runs.create(second.id, data_source=premade(("a", "a")))
    assert client.evals.delete(second.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.evals.retrieve(second.id)
    with pytest.raises(openai.NotFoundError):
        client.evals.runs.retrieve(run.id, eval_id=second.id)


def test_an_eval_file_is_read_and_checked_line_by_line(client):
    ev = make_eval(client)
    rows = [{"item": {"label": "Billing"}, "sample": {"output_text": "Billing"}}] * 3
    good = client.files.create(file=("rows.jsonl", jsonl(rows)), purpose="user_data")
    source = {"type": "jsonl", "source": {"type": "file_id", "id": good.id}}
    run = wait_run(client, ev.id, client.evals.runs.create(ev.id, data_source=source).id)
    assert (run.result_counts.total, run.result_counts.passed) == (3, 3)
    bad_rows = rows + [{"item": {"label": 7}, "sample": {"output_text": "x"}}]
    bad = client.files.create(file=("bad.jsonl", jsonl(bad_rows)), purpose="user_data")
    with pytest.raises(openai.BadRequestError) as err:
        client.evals.runs.create(ev.id, data_source={"type": "jsonl", "source": {"type": "file_id", "id": bad.id}})
    body = err.value.body
    assert (body["code"], body["line"], body["field"]) == ("invalid_eval_data", 4, "item.label"), body
    assert "7 is not of type 'string'" in body["message"]


@pytest.mark.parametrize(
    ("request_body", "param", "code"),
    [
        ({"data_source_config": {"type": "logs"}}, "data_source_config", "invalid_value"),
        (
            {"data_source_config": {"type": "custom", "item_schema": {"type": "nope"}}},
            "data_source_config.item_schema",
            "invalid_value",
        ),
        (
            {"testing_criteria": [{**CLOSE, "pass_threshold": None}]},
            "testing_criteria[0].pass_threshold",
            "invalid_value",
        ),
        ({"testing_criteria": [LABEL, LABEL]}, "testing_criteria", "invalid_value"),
        ({"testing_criteria": [{**LABEL, "type": "multi"}]}, "testing_criteria[0].type", "invalid_value"),
        ({"testing_criteria": [{**LABEL, "weight": 1}]}, "testing_criteria[0].weight", "unknown_parameter"),
        ({"shared": True}, "shared", "unknown_parameter"),
    ],
)
def test_create_eval_refusals_name_the_field(client, request_body, param, code):
    body = {
        "data_source_config": {"type": "custom", "item_schema": SCHEMA},
        "testing_criteria": [LABEL],
        **request_body,
    }
    with pytest.raises(openai.BadRequestError) as err:
        client.post("/evals", body=body, cast_to=object)
    assert (err.value.body["param"], err.value.body["code"]) == (param, code), err.value.body


def test_create_run_refusals_name_the_field(client):
    ev = make_eval(client)
    sample_less = {"type": "jsonl", "source": {"type": "file_content", "content": [{"item": {"label": "a"}}]}}
    completions = {
        "type": "completions",
        "source": {"type": "file_content", "content": [{"item": {"label": "a"}}]},
        "input_messages": {"type": "template", "template": [{"role": "user", "content": "{{ item.label }}"}]},
        "model": "hone-tiny",
    }
    cases = [
        (sample_less, "data_source.source.content[0].item", "invalid_eval_data"),
        ({**completions, "model": "gpt-4o"}, "data_source.model", "model_not_found"),
        (
            {**completions, "sampling_params": {"tools": []}},
            "data_source.sampling_params.tools",
            "unsupported_parameter",
        ),
        ({"type": "responses", "source": {"type": "responses"}}, None, "invalid_value"),
        ({**completions, "source": {"type": "stored_completions"}}, "data_source.source", "invalid_value"),
    ]
    for data_source, param, code in cases:
        with pytest.raises(openai.BadRequestError) as err:
            client.evals.runs.create(ev.id, data_source=data_source)
        assert (err.value.body["param"], err.value.body["code"]) == (param, code), (data_source, err.value.body)


def test_another_projects_eval_does_not_exist_for_this_one(client, other_project):
    ev = make_eval(client)
    run = client.evals.runs.create(ev.id, data_source=premade(("a", "a")))
    theirs = other_project.openai()
    assert ev.id not in [e.id for e in theirs.evals.list(limit=100)]
    for call in (
        lambda: theirs.evals.retrieve(ev.id),
        lambda: theirs.evals.delete(ev.id),
        lambda: theirs.evals.runs.retrieve(run.id, eval_id=ev.id),
        lambda: theirs.evals.runs.list(ev.id),
        lambda: theirs.evals.runs.create(ev.id, data_source=premade(("a", "a"))),
        lambda: theirs.evals.runs.output_items.list(run.id, eval_id=ev.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert client.evals.retrieve(ev.id).id == ev.id


# --- sampled runs, on the FAKE engine ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("evals")
    env = {"HONE_ENGINE_PYTHON": FAKE_ENGINE_PYTHON, "HONE_EVAL_CONCURRENCY": "2", "HONE_EVAL_POLL_S": "0.5"}
    state = {"server": HoneServer(folder, env), "folder": folder, "env": env}
    try:
        state["project"] = project = state["server"].new_project("evals")
        with project.http() as http:
            assert http.post("/v1/endpoints", json={"model": "hone-tiny"}).status_code == 200
            assert wait_endpoint(http, "hone-tiny")["state"] == "ready"
        yield state
    finally:
        state["server"].stop()  # the one running now: a test restarts it


def completions(count: int, prompt: str = "Label: {{ item.label }}") -> dict:
    return {
        "type": "completions",
        "source": {"type": "file_content", "content": [{"item": {"label": f"t{i}"}} for i in range(count)]},
        "input_messages": {"type": "template", "template": [{"role": "user", "content": prompt}]},
        "model": "hone-tiny",
        "sampling_params": {"temperature": 0, "max_completion_tokens": 8, "seed": 3},
    }


SLOW = {
    "type": "python",
    "name": "slow",
    "source": "import time\ndef grade(sample, item):\n    time.sleep(0.3)\n    return 1.0\n",
}
ANSWER = {**LABEL, "name": "answer", "reference": "answer base"}


def test_a_completions_run_samples_the_model_and_counts_its_usage(served):
    client = served["project"].openai()
    ev = make_eval(client, criteria=[ANSWER])
    run = wait_run(client, ev.id, client.evals.runs.create(ev.id, data_source=completions(6)).id)
    assert run.status == "completed" and run.model == "hone-tiny"
    assert (run.result_counts.passed, run.result_counts.total) == (6, 6)
    (usage,) = run.per_model_usage
    assert (usage.model_name, usage.invocation_count) == ("hone-tiny", 6) and usage.prompt_tokens > 0
    item = next(iter(client.evals.runs.output_items.list(run.id, eval_id=ev.id)))
    assert item.sample.input[0].content == "Label: t0" and item.sample.output[0].content == "answer base"
    assert item.sample.seed == 3 and item.sample.temperature == 0


def test_cancel_stops_a_run_between_batches(served):
    client = served["project"].openai()
    ev = make_eval(client, criteria=[ANSWER, SLOW])
    run = client.evals.runs.create(ev.id, data_source=completions(60))
    wait_for(lambda: client.evals.runs.retrieve(run.id, eval_id=ev.id).result_counts.passed > 0, 30)
    canceled = client.evals.runs.cancel(run.id, eval_id=ev.id)
    assert canceled.status == "canceled"
    time.sleep(2)
    graded = len(list(client.evals.runs.output_items.list(run.id, eval_id=ev.id, limit=100)))
    assert 0 < graded < 60
    time.sleep(1)
    assert len(list(client.evals.runs.output_items.list(run.id, eval_id=ev.id, limit=100))) == graded


def test_a_run_survives_a_control_plane_restart(served):
    server, project = served["server"], served["project"]
    client = project.openai()
    ev = make_eval(client, criteria=[ANSWER, SLOW])
    run = client.evals.runs.create(ev.id, data_source=completions(24))
    wait_for(lambda: client.evals.runs.retrieve(run.id, eval_id=ev.id).result_counts.passed >= 8, 30)
    server.stop()  # SIGTERM: the run stays in progress, its graded items kept
    restarted = HoneServer(served["folder"], served["env"], admin_key=server.admin_key, port=server.port)
    served["server"] = restarted
    finished = wait_run(client, ev.id, run.id, timeout=90)
    assert finished.status == "completed" and finished.result_counts.passed == 24
    items = list(client.evals.runs.output_items.list(run.id, eval_id=ev.id, limit=100))
    assert sorted(i.datasource_item_id for i in items) == list(range(24))  # none twice, none lost
    exposed = httpx.get(restarted.base_url + "/metrics", timeout=10).text
    assert 'hone_eval_runs{status="completed"}' in exposed
    assert 'hone_eval_output_items_total{status="pass"}' in exposed
