"""Schemathesis over the app's own OpenAPI document: every operation, every check, stateful sequences through the
document's links, on both backends (SQLite + a folder, PostgreSQL + S3 on moto).

The app runs in-process (schemathesis's ASGI transport), with no training slots and engines that never start
(the static backend with none configured): requests reach every route, the database and the store for real, and
no trainer or engine process is started. Generation is deterministic (a fixed seed, no example database), so a
failure here is the same failure on every run."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import schemathesis
from schemathesis.engine import events
from schemathesis.python import asgi as schemathesis_asgi

from service.app import create_app
from service.settings import Settings
from tests.conftest import BACKENDS
from tests.support import chat_dataset

ADMIN_KEY = "sk-admin-schemathesis"
ADMIN_PATHS = "^/v1/(organization|admin)/"
MAX_EXAMPLES = 3  # per operation and phase: about a minute per backend on a 2-core machine


@pytest.fixture(scope="module", params=BACKENDS)
def app(request, tmp_path_factory):
    env = {}
    settings = dict(data_dir=tmp_path_factory.mktemp(f"schemathesis-{request.param}"), admin_api_key=ADMIN_KEY,
                    local_slots=0, auto_deploy=False, endpoint_backend="static", prewarm_engines=False,
                    base_models={"acme/tiny-chat": "/models/acme-tiny-chat"})
    if request.param == "postgres-s3":
        moto, postgres = request.getfixturevalue("moto"), request.getfixturevalue("postgres")
        env = moto.env()
        settings |= {"database_url": postgres.url, "storage_url": "s3://hone-schemathesis/blobs"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():  # boto3 reads the S3 endpoint and credentials from the environment
            patch.setenv(name, value)
        application = create_app(Settings(**settings))
        yield application
        schemathesis_asgi.shutdown_lifespans()  # the app's background loops stop, its database is closed


@dataclasses.dataclass(frozen=True)
class Finding:
    phase: str
    operation: str
    check: str
    title: str
    request: str
    status: int | None
    body: str

    def __str__(self) -> str:
        return f"[{self.phase}] {self.operation}: {self.check} ({self.title})\n    {self.request} -> {self.status} " \
               f"{self.body}"


def _config(authorization: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict({
        "seed": 20261204,
        "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none", "mode": "all"},
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True}, "fuzzing": {"enabled": True},
                   "stateful": {"enabled": True, "max-steps": 8, "generation": {"max-examples": 12}}},
        "checks": {
            "enabled": True,
            # A schema-valid request can still be refused for what it names, in the envelope, as OpenAI does: an
            # unknown `after` cursor, a model that is not a base model, a training file that is not JSONL.
            "positive_data_acceptance": {"expected-statuses": ["2xx", "400", "401", "403", "404"]},
        },
        "headers": {"Authorization": authorization},
        "workers": 1,
        "operations": [{
            # A project's W&B key is a singleton it may never get: "created resource not found" is schemathesis
            # reading POST /projects -> GET /projects/{id}/integrations/wandb as create-then-read; the 404 is right.
            "include-path": "/v1/organization/projects/{project_id}/integrations/wandb", "include-method": "GET",
            "checks": {"ensure_resource_availability": {"enabled": False}},
        }],
    })


# Failures whose fix is in flight elsewhere, matched narrowly (operation and what the failure says), so that any other
# failure of the same operation still fails this test. They are reported as warnings until the fix lands; then
# remove the entry.
PENDING = [
    # The lead's fix in service/files.py: a multipart part header (Content-Disposition filename) holding characters
    # outside latin-1 makes python-multipart's parse_options_header raise UnicodeEncodeError: a 500.
    ("POST /v1/files", "'latin-1' codec can't encode character"),
]


def _pending(operation: str, text: str) -> bool:
    return any(operation == op and needle in text for op, needle in PENDING)


def _findings(schema) -> list[Finding]:
    """Runs every phase; returns the failed checks (one per operation, check and kind) and the engine's errors (an
    exception the app raised reaches the ASGI transport as one)."""
    found: dict[tuple, Finding] = {}
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.FatalError):
            found[("engine", repr(event.exception))] = Finding("", "engine", "fatal error", repr(event.exception),
                                                               "", None, "")
        elif isinstance(event, events.NonFatalError):
            text = event.info.format()
            found.setdefault((event.label, text[:200]), Finding(str(event.phase), event.label, "error", text[:2000],
                                                                "", None, ""))
        elif isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    if check.status.name == "SUCCESS":
                        continue
                    case = recorder.cases[case_id].value
                    failure = check.failure_info.failure if check.failure_info else None
                    title = f"{failure.title}: {failure.message}"[:500] if failure else check.status.name
                    key = (case.operation.label, check.name, failure.title if failure else "")
                    interaction = recorder.interactions.get(case_id)
                    request = interaction.request if interaction else None
                    response = interaction.response if interaction else None
                    found.setdefault(key, Finding(
                        str(getattr(event.phase, "name", event.phase)), case.operation.label, check.name, title,
                        f"{request.method} {request.uri}"[:300] if request else case.method,
                        response.status_code if response else None,
                        (response.content or b"")[:300].decode(errors="replace") if response else ""))
    return list(found.values())


def _admin_header() -> str:
    return f"Bearer {ADMIN_KEY}"


def _seeded_project_key(app) -> str:
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
        upload = client.post(f"{base}/v1/files", files={"file": ("train.jsonl", chat_dataset(12))},
                             data={"purpose": "fine-tune"}, headers=user)
        assert upload.ok, upload.text
        job = client.post(f"{base}/v1/fine_tuning/jobs", json={"model": "hone-tiny", "training_file":
                                                               upload.json()["id"], "suffix": "contract"},
                          headers=user)
        assert job.ok, job.text
        assert client.post(f"{base}/v1/endpoints", json={"model": "hone-tiny"}, headers=user).ok
    return account["api_key"]["value"]


def test_the_api_keeps_its_openapi_contract(app):
    """0 server errors, 0 responses off their schema, status or content type, 0 accepted invalid requests, on every
    operation: the project's routes with a project key, the administration routes with the admin key."""
    key = _seeded_project_key(app)
    project_api = schemathesis.openapi.from_asgi("/openapi.json", app, config=_config(f"Bearer {key}"))
    admin_api = schemathesis.openapi.from_asgi("/openapi.json", app, config=_config(_admin_header()))
    assert len(list(project_api.get_all_operations())) > 40  # the gateway's and Vertex's routes included
    findings = _findings(project_api.exclude(path_regex=ADMIN_PATHS)) + \
        _findings(admin_api.include(path_regex=ADMIN_PATHS))
    pending = [f for f in findings if _pending(f.operation, f.title + f.body)]
    for operation, needle in PENDING:
        seen = [f for f in pending if f.operation == operation and needle in f.title + f.body]
        if seen:
            warnings.warn(f"{len(seen)} failures pending a fix in flight: {operation}: {needle}", stacklevel=1)
    failed = [f for f in findings if f not in pending]
    assert not failed, f"{len(failed)} failures:\n" + "\n".join(str(f) for f in failed)
