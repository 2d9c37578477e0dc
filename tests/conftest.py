"""Fixtures: real servers on free ports, over SQLite + filesystem and PostgreSQL + S3 (moto)."""

from __future__ import annotations

import os
import sys
from pathlib import PurePosixPath

import pytest
from xdist.scheduler import LoadFileScheduling

# In-process trainer tests share 2 cores with servers and trainers: spinning OpenMP workers would thrash.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# The interpreter tests/fake_engine/python runs the fake engine with (engines inherit it through the server).
os.environ.setdefault("FAKE_ENGINE_PYTHON", sys.executable)

from tests.support import HoneServer, MotoServer, PostgresDatabase, stop_leftover_servers

BACKENDS = ["sqlite-fs", "postgres-s3"]


@pytest.fixture(scope="session", autouse=True)
def no_server_left_running():
    """A test or fixture that loses a server fails the run: left running, it would poll its database on the cores
    the rest of the suite needs, and outlive the suite (a restarted server the evals fixture did not stop did)."""
    yield
    if left := stop_leftover_servers():
        pytest.fail(f"servers nobody stopped (now stopped): {', '.join(map(str, left))}")


@pytest.fixture(scope="session")
def moto():
    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres():
    db = PostgresDatabase()
    yield db
    db.drop()


@pytest.fixture(scope="session", params=BACKENDS)
def server(request, tmp_path_factory):
    """The control plane, once per backend pair; every API test runs against both."""
    # A second base model whose id holds '/', as Hugging Face ids do.
    # No training slots: API tests drive job states by hand; training tests start their own servers.
    env = {"HONE_BASE_MODELS": '{"acme/tiny-chat": "/models/acme-tiny-chat"}', "HONE_LOCAL_SLOTS": "0"}
    if request.param == "postgres-s3":
        moto, postgres = request.getfixturevalue("moto"), request.getfixturevalue("postgres")
        env |= {**moto.env(), "HONE_DATABASE_URL": postgres.url, "HONE_STORAGE_URL": "s3://hone-tests/blobs"}
    srv = HoneServer(tmp_path_factory.mktemp(request.param), env)
    srv.backend = request.param
    yield srv
    srv.stop()


@pytest.fixture
def project(server):
    return server.new_project()


@pytest.fixture
def other_project(server):
    return server.new_project("other project")


@pytest.fixture
def client(project):
    """The real openai SDK, whose every response body is checked against OpenAI's JSON Schemas."""
    return project.openai()


# The modules that train and serve take minutes each: collected first, longest first (wall time per module in a
# full run, `-p tests.cpu_profile`, 2026-12-05), so that pytest-xdist starts them early instead of leaving one for
# last on a single worker while the others idle; the short ones then fill in. scripts/test.sh passes
# --no-loadscope-reorder: xdist's own order (most tests first) put the module of six slow tests last, alone for
# minutes.
LONGEST_FIRST = [
    "test_continuation.py",  # with test_serving.py and test_evals.py: the tuned_tickets package, one unit
    "test_serving.py",
    "test_evals.py",
    "test_schemathesis.py",
    "test_vision.py",
    "test_tool_training.py",
    "test_data_parallel.py",
    "test_training_control.py",
    "test_training.py",
    "test_readme.py",  # the README's shell blocks: one hone-tiny job, three endpoints, ~2 min
    "test_trainer_robustness.py",
    "test_cli.py",
    "test_observability.py",
    "test_qlora.py",
    "test_evals_api.py",
    "test_kubernetes_executor.py",
    "test_engine_protocol.py",
    "test_rft_api.py",
    "test_storage_faults.py",
    "test_deploy_observability.py",
    "test_endpoint_lifecycle.py",
    "test_kubernetes_engines.py",
    "test_job_evaluation.py",
    "test_vision_inputs.py",
    "test_input_hardening.py",
    "test_graders_api.py",
    "test_database_restart.py",
    "test_sdk.py",
    "test_structured_outputs.py",
    "test_wandb_integration.py",
    "test_console.py",  # headless Chromium over a server with the fake trainer and engine: ~35 s, ~16 s of CPU
    "test_jobs_api.py",
    "test_trainer_core.py",
    "test_vertex_api.py",
    "test_admin_api.py",
    "test_replicas.py",
    "test_server.py",
    "test_quiet.py",
    "test_warm_start.py",
    "test_dataset_corpus.py",
    "test_sdk_install.py",
]
# Packages whose modules share a package-scoped fixture (a tuned model): each is one unit of work for
# pytest-xdist, so that one worker runs its modules back to back and the fixture is built once.
SHARED_PACKAGES = {"tuned_tickets"}


class LoadFileOrSharedPackage(LoadFileScheduling):
    """`--dist loadfile`, except that the modules of a package in SHARED_PACKAGES go to one worker together.
    (pytest-xdist's own xdist_group marks do not group under pytest 9: they rename the item's old `_nodeid`.)"""

    def _split_scope(self, nodeid: str) -> str:
        path = nodeid.split("::", 1)[0]
        package = PurePosixPath(path).parent
        return str(package) if package.name in SHARED_PACKAGES else path


def pytest_xdist_make_scheduler(config, log):
    return LoadFileOrSharedPackage(config, log) if config.getvalue("dist") == "loadfile" else None


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order
