"""Schemathesis over the app's own OpenAPI document: every operation, every check, stateful sequences through the
document's links, on both backends (SQLite + a folder, PostgreSQL + S3 on moto).

The app runs in-process (schemathesis's ASGI transport), with no training slots and engines that never start
(the static backend with none configured): requests reach every route, the database and the store for real, and
no trainer or engine process is started. Generation is deterministic (a fixed seed, no example database), so a
failure here is the same failure on every run."""

from __future__ import annotations

import dataclasses
import re

import pytest
import schemathesis
from schemathesis.engine import events
from schemathesis.python import asgi as schemathesis_asgi

from service.app import create_app
from service.settings import Settings
from tests.conftest import BACKENDS
from tests.support import PostgresDatabase, chat_dataset

ADMIN_KEY = "sk-admin-schemathesis"
# The admin key's routes: the Administration API, and OpenAI's checkpoint permissions (admin key, as OpenAI's).
ADMIN_PATHS = "^/v1/(organization|admin|fine_tuning/checkpoints)/"
# Every other path. `include(path_regex=ADMIN_PATHS)` would not narrow: schemathesis ORs it with the include filter
# the config's per-operation settings add, which every operation matches (the admin run fuzzed all 69 operations
# with the admin key, the project's 50 only to be refused); `exclude` narrows.
NOT_ADMIN_PATHS = "^(?!/v1/(organization|admin|fine_tuning/checkpoints)/)"
MAX_EXAMPLES = 3  # per operation and phase: about 30 s per backend on a 2-core machine


class Served:
    """The app as uvicorn serves it: an exception it raises after answering (its 500 envelope) is logged, and the
    client gets the 500. Schemathesis's ASGI transport would raise it instead, which ends a stateful run early."""

    def __init__(self, app):
        self.app, self.state = app, app.state

    async def __call__(self, scope, receive, send):
        answered = False

        async def noting_send(message):
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, noting_send)
        except Exception:
            if not answered:
                raise


@pytest.fixture(scope="module", params=BACKENDS)
def app(request, tmp_path_factory):
    env = {}
    settings = dict(
        data_dir=tmp_path_factory.mktemp(f"schemathesis-{request.param}"),
        admin_api_key=ADMIN_KEY,
        local_slots=0,
        auto_deploy=False,
        endpoint_backend="static",
        prewarm_engines=False,
        endpoint_wake_wait_s=0,  # a request for a waking model answers 503 at once, not in a minute
        base_models={"acme/tiny-chat": "/models/acme-tiny-chat"},
    )
    database = None
    if request.param == "postgres-s3":
        moto = request.getfixturevalue("moto")
        # A database of its own: the base models, projects and keys the fuzzing registers must not show up in the
        # session's shared database, where other modules list them.
        database = PostgresDatabase()
        env = moto.env()
        settings |= {"database_url": database.url, "storage_url": "s3://hone-schemathesis/blobs"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():  # boto3 reads the S3 endpoint and credentials from the environment
            patch.setenv(name, value)
        yield Served(create_app(Settings(**settings)))
        schemathesis_asgi.shutdown_lifespans()  # the app's background loops stop, its database is closed
    if database is not None:
        database.drop()


@dataclasses.dataclass(frozen=True)
class Finding:
    phase: str
    operation: str
    check: str
    title: str
    request: str
    status: int | None
    body: str
    request_body: bytes = b""

    def __str__(self) -> str:
        sent = f"\n    sent: {self.request_body[:600]!r}" if self.request_body else ""
        return (
            f"[{self.phase}] {self.operation}: {self.check} ({self.title})\n    {self.request} -> {self.status} "
            f"{self.body}{sent}"
        )


def _config(authorization: str, project_id: str = "") -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "seed": 20261204,
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
                "mode": "all",
                "no-shrink": True,
            },  # a failure is reported as found: shrinking one took minutes
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": True, "max-steps": 8, "generation": {"max-examples": 25}},
            },
            "checks": {
                "enabled": True,
                # A schema-valid request can still be refused for what it names, in the envelope, as OpenAI does: an
                # unknown `after` cursor, a model that is not a base model, a training file that is not JSONL.
                "positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "403", "404"]},
            },
            "headers": {"Authorization": authorization},
            "workers": 1,
            # Vertex's routes answer 404 for any {project} but the key's own: name it, so that they answer real objects.
            "parameters": {"path.project": project_id} if project_id else {},
            "operations": [
                {
                    # A project's W&B key is a singleton it may never get: "created resource not found" is schemathesis
                    # reading POST /projects -> GET /projects/{id}/integrations/wandb as create-then-read; the 404 is right.
                    "include-path": "/v1/organization/projects/{project_id}/integrations/wandb",
                    "include-method": "GET",
                    "checks": {"ensure_resource_availability": {"enabled": False}},
                },
                {
                    # A deleted endpoint stays readable, `stopped` (service.endpoints.delete_endpoint keeps the record).
                    "include-path": "/v1/endpoints/{endpoint_id}",
                    "include-method": "GET",
                    "checks": {"use_after_free": {"enabled": False}},
                },
                {
                    # Stored completions by id, their messages, the export, and their list: fuzzed and run through the
                    # examples, but not through the coverage phase, whose every boundary of every field and filter
                    # (about 1,300 cases each) doubled the module's CPU for routes that only read a project's rows.
                    "include-path-regex": r"^/v1/chat/completions/",
                    "phases": {"coverage": {"enabled": False}},
                },
                {
                    "include-path": "/v1/chat/completions",
                    "include-method": "GET",
                    "phases": {"coverage": {"enabled": False}},
                },
                {
                    # The seeded endpoint cannot start (no engines here): calling its model is the documented 503 "its
                    # endpoint failed", as it would be in production; only a 500 would be a server error.
                    "include-path-regex": r":(generateContent|streamGenerateContent|countTokens)$|^/v1/(chat/)?completions$",
                    "checks": {
                        "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "502", "503"]},
                        "positive_data_acceptance": {
                            "expected-statuses": ["2xx", "400", "401", "403", "404", "502", "503"]
                        },
                    },
                },
            ],
        }
    )


def _non_latin1_part_header(finding: Finding) -> bool:
    headers = [
        line
        for line in finding.request_body.decode("utf-8", "replace").splitlines()
        if line.lower().startswith("content-disposition")
    ]
    return any(ord(char) > 0xFF for line in headers for char in line)


def _findings(schema) -> list[Finding]:
    """Runs every phase; returns every failed check, and the engine's own errors."""
    found: dict[tuple, Finding] = {}
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.FatalError):
            found[("engine", repr(event.exception))] = Finding(
                "", "engine", "fatal error", repr(event.exception), "", None, ""
            )
        elif isinstance(event, events.NonFatalError):
            text = event.info.format()
            found.setdefault(
                (event.label, text[:200]), Finding(str(event.phase), event.label, "error", text[:2000], "", None, "")
            )
        elif isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    if check.status.name == "SUCCESS":
                        continue
                    case = recorder.cases[case_id].value
                    failure = check.failure_info.failure if check.failure_info else None
                    title = f"{failure.title}: {failure.message}"[:500] if failure else check.status.name
                    key = (case.operation.label, check.name, failure.title if failure else "", case_id)
                    interaction = recorder.interactions.get(case_id)
                    request = interaction.request if interaction else None
                    response = interaction.response if interaction else None
                    found[key] = Finding(
                        str(getattr(event.phase, "name", event.phase)),
                        case.operation.label,
                        check.name,
                        title,
                        f"{request.method} {request.uri}"[:300] if request else case.method,
                        response.status_code if response else None,
                        (response.content or b"")[:300].decode(errors="replace") if response else "",
                        (request.body or b"") if request else b"",
                    )
    return list(found.values())


def _distinct(findings: list[Finding]) -> list[Finding]:
    """One finding per operation, check and kind of failure, for the report."""
    return list({(f.operation, f.check, f.title[:80]): f for f in findings}.values())


def _admin_header() -> str:
    return f"Bearer {ADMIN_KEY}"


def _seeded_project_key(app) -> tuple[str, str]:
    """A project and its key, made through the admin API as a user would, holding one of each object (a file, a
    queued job, an endpoint that cannot start, a W&B key, a dataset grant), so that lists and the Vertex views
    answer real objects for the response checks."""
    admin = {"Authorization": _admin_header()}
    base = "http://testserver"
    with schemathesis_asgi.get_client(app) as client:
        project = client.post(f"{base}/v1/organization/projects", json={"name": "schemathesis"}, headers=admin).json()
        projects = f"{base}/v1/organization/projects/{project['id']}"
        account = client.post(f"{projects}/service_accounts", json={"name": "schemathesis"}, headers=admin).json()
        assert client.put(f"{projects}/integrations/wandb", json={"api_key": "wandb-key"}, headers=admin).ok
        assert client.post(f"{projects}/dataset_grants", json={"uri": "gs://datasets/tuning/"}, headers=admin).ok
        user = {"Authorization": f"Bearer {account['api_key']['value']}"}
        upload = client.post(
            f"{base}/v1/files",
            files={"file": ("train.jsonl", chat_dataset(12))},
            data={"purpose": "fine-tune"},
            headers=user,
        )
        assert upload.ok, upload.text
        job = client.post(
            f"{base}/v1/fine_tuning/jobs",
            json={"model": "hone-tiny", "training_file": upload.json()["id"], "suffix": "contract"},
            headers=user,
        )
        assert job.ok, job.text
        assert client.post(f"{base}/v1/endpoints", json={"model": "hone-tiny"}, headers=user).ok
    return project["id"], account["api_key"]["value"]


def test_the_api_keeps_its_openapi_contract(app):
    """0 server errors, 0 responses off their schema, status or content type, 0 accepted invalid requests, on every
    operation: the project's routes with a project key, the administration routes with the admin key."""
    project_id, key = _seeded_project_key(app)
    project_api = schemathesis.openapi.from_asgi("/openapi.json", app, config=_config(f"Bearer {key}", project_id))
    admin_api = schemathesis.openapi.from_asgi("/openapi.json", app, config=_config(_admin_header()))
    assert len(list(project_api.get_all_operations())) > 40  # the gateway's and Vertex's routes included
    project_ops, admin_ops = project_api.exclude(path_regex=ADMIN_PATHS), admin_api.exclude(path_regex=NOT_ADMIN_PATHS)
    project_labels, admin_labels = (
        {op.ok().label for op in api.get_all_operations()} for api in (project_ops, admin_ops)
    )
    assert admin_labels and all(re.match(ADMIN_PATHS, label.split(" ", 1)[1]) for label in admin_labels)
    everything = {op.ok().label for op in project_api.get_all_operations()}
    assert not project_labels & admin_labels and project_labels | admin_labels == everything  # each in one run
    findings = _findings(project_ops) + _findings(admin_ops)
    failed = _distinct(findings)
    assert not failed, f"{len(failed)} failures:\n" + "\n".join(str(f) for f in failed)


# --- what the run found, pinned down ------------------------------------------------------------------------------


def _client(app):
    return schemathesis_asgi.get_client(app)


@pytest.mark.parametrize(
    "path, allow",
    [
        ("/v1/files/file-abc", "DELETE, GET"),
        ("/v1/files/file-abc/content", "GET"),  # {file_id:path} also matches "file-abc/content"; the URL is the content
        ("/v1beta1/projects/p/locations/l/tuningJobs/j:cancel", "POST"),  # {job_id} also matches "j:cancel"
        ("/v1/chat/completions", "GET, POST"),  # the gateway's POST, the stored completions' list
    ],
)
def test_a_405_allows_every_method_of_its_url(app, path, allow):
    """Starlette named only the first matching route's methods (GET and DELETE of one URL are two routes), or none:
    the Allow header lists the methods the document declares for the URL."""
    with _client(app) as client:
        response = client.request("PUT", f"http://testserver{path}")
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert (
        response.json()["error"]["code"] == "method_not_allowed"
        or response.json()["error"]["status"] == "UNIMPLEMENTED"
    )


def test_an_unknown_vertex_api_version_answers_googles_envelope(app):
    with _client(app) as client:
        response = client.get("http://testserver/v2alpha/projects/p/locations/l/tuningJobs")
    assert response.status_code == 404
    assert response.json()["error"]["status"] == "NOT_FOUND"  # what the route's documented 404 carries


@pytest.mark.parametrize(
    "method, path, body, code",
    [
        ("GET", "/v1/files/file-%00", None, "invalid_value"),
        ("GET", "/v1/fine_tuning/jobs?after=ftjob-%00", None, "invalid_value"),
        ("POST", "/v1/endpoints", {"model": "ft:\u0000"}, "invalid_string"),
        ("POST", "/v1/chat/completions", {"model": "m\u0000", "messages": []}, "invalid_string"),
    ],
)
def test_a_nul_character_is_never_a_server_error(app, method, path, body, code):
    """PostgreSQL refuses NUL in text (SQLite stores it): refused up front on both backends, a 400 naming it, never
    a 500 (a NUL in a path or query value, or in any string of a JSON body)."""
    _, key = _seeded_project_key(app)
    with _client(app) as client:
        response = client.request(
            method, f"http://testserver{path}", json=body, headers={"Authorization": f"Bearer {key}"}
        )
    error = response.json()["error"]
    assert (response.status_code, error["code"]) == (400, code), response.text
    assert "NUL" in error["message"]


def test_response_models_cost_nothing_per_request(app, monkeypatch):
    """The response models are for the document: a route's dict still goes out as it is, never through FastAPI's
    response validation and serialization (service/api/routing.py)."""
    import fastapi
    import fastapi.routing

    calls = []
    real = fastapi.routing.serialize_response
    monkeypatch.setattr(fastapi.routing, "serialize_response", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    _, key = _seeded_project_key(app)
    with _client(app) as client:
        response = client.get("http://testserver/v1/fine_tuning/jobs", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200 and response.json()["data"]
    assert calls == []
    # The control: a plain FastAPI route with a response model does go through it.
    control = fastapi.FastAPI()
    control.get("/x", response_model=dict)(lambda: {"a": 1})
    with _client(control) as client:
        assert client.get("http://testserver/x").json() == {"a": 1}
    assert calls == [1]


def test_vertex_job_states_are_the_documented_ones():
    """The TuningJob model spells JobState out; it must stay the table service.vertex.states numbers."""
    from typing import get_args

    from service.vertex.api_models import JobState
    from service.vertex.states import JOB_STATE_NUMBERS

    assert set(get_args(JobState)) == set(JOB_STATE_NUMBERS)
