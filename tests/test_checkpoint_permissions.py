"""Checkpoint permissions (OpenAI's `client.fine_tuning.checkpoints.permissions`, with the admin key): a tuned model
or checkpoint of project A shared with project B. B can list it, deploy and call it, and continue it; it cannot
delete or download it, nor see A's job. A third project never sees it, and before the grant (or after its revoking)
B is answered as for a model that does not exist, in the same words.

The grants and what they open are tested on the session's servers (both backends) with a tuned model's row
(tests/test_models_api.add_tuned_model), without weights or engines. Serving and continuing a shared model run on a
server of this module with the FAKE trainer and engine (tests/fake_trainer, tests/fake_engine): what is tested is
which project may use which weights, not what they answer."""

from __future__ import annotations

import json

import openai
import pytest
from typer.testing import CliRunner

import hone
from hone.cli import app as hone_cli
from tests.fake_engine.engine import answer_of
from tests.support import (
    FAKE_ENGINE_PYTHON,
    HoneServer,
    chat_dataset,
    chat_line,
    fake_trainer_env,
    tune_hone_tiny,
    wait_endpoint,
    wait_for,
    wait_job,
)
from tests.test_models_api import add_tuned_model


def admin_of(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=server.admin_key, max_retries=0)


def refusal(call, error=openai.NotFoundError):
    with pytest.raises(error) as err:
        call()
    return err.value


def same_words(call_with, model: str, ghost: str, error=openai.NotFoundError) -> None:
    """`call_with(model)` is refused exactly as `call_with(ghost)`, a name that does not exist: same status, code,
    param and message (the name aside)."""
    seen, missing = refusal(lambda: call_with(model), error), refusal(lambda: call_with(ghost), error)
    assert (seen.status_code, seen.code, seen.param) == (missing.status_code, missing.code, missing.param)
    assert seen.message.replace(model, "<model>") == missing.message.replace(ghost, "<model>")


def test_a_grant_lends_a_model_to_one_project_and_no_other(server, project, client, other_project):
    admin, owner, grantee = admin_of(server), client, other_project.openai()
    third = server.new_project("third").openai()
    model = add_tuned_model(server, project, client)
    ghost = model[:-6] + "nopeXY"  # the same shape, no such model
    job_id = model.rsplit(":", 1)[1]
    training = grantee.files.create(file=("t.jsonl", chat_dataset(10)), purpose="fine-tune").id

    def continue_it(name):
        return grantee.fine_tuning.jobs.create(model=name, training_file=training)

    def deploy(name):
        with other_project.http() as http:
            resp = http.post("/v1/endpoints", json={"model": name})
        assert resp.status_code == 404
        raise openai.NotFoundError(resp.json()["error"]["message"], response=resp, body=resp.json()["error"])

    # Before the grant, another project's model is a model that does not exist.
    same_words(grantee.models.retrieve, model, ghost)
    same_words(grantee.models.delete, model, ghost)
    same_words(continue_it, model, ghost, openai.BadRequestError)
    same_words(deploy, model, ghost)
    assert model not in [m.id for m in grantee.models.list()]

    created = admin.fine_tuning.checkpoints.permissions.create(model, project_ids=[other_project.project_id])
    [permission] = created.data
    assert permission.object == "checkpoint.permission" and permission.id.startswith("cp_")
    assert permission.project_id == other_project.project_id and permission.created_at > 0

    # The grantee sees and names it; its owner is A.
    listed = {m.id: m for m in grantee.models.list()}
    assert listed[model].owned_by == project.project_id
    assert grantee.models.retrieve(model).owned_by == project.project_id
    # Continuing it finds the model (this row has no weights, so the job is refused for that, not as unknown).
    err = refusal(lambda: continue_it(model), openai.BadRequestError)
    assert err.param == "model" and "no longer in storage" in err.message
    # ... but it is not the grantee's: no deleting, no weights, nothing of the owner's job.
    err = refusal(lambda: grantee.models.delete(model), openai.PermissionDeniedError)
    assert err.code == "model_not_deletable" and "only its owner" in err.message
    with other_project.http() as http:
        download, missing = (http.get(f"/v1/models/{name}/content") for name in (model, ghost))
    assert download.status_code == missing.status_code == 404
    words = [r.json()["error"]["message"].replace(name, "") for r, name in ((download, model), (missing, ghost))]
    assert words[0] == words[1]
    for call in (
        lambda: grantee.fine_tuning.jobs.retrieve(job_id),
        lambda: grantee.fine_tuning.jobs.list_events(job_id),
        lambda: grantee.fine_tuning.jobs.checkpoints.list(job_id),
    ):
        refusal(call)
    # The owner sees nothing of the grantee's, nor does a third project see the model.
    refusal(lambda: owner.files.retrieve(training))
    assert training not in [f.id for f in owner.files.list()]
    same_words(third.models.retrieve, model, ghost)
    assert model not in [m.id for m in third.models.list()]
    # The grants are the admin's: no project key reads or makes them, the owner's included.
    for key in (grantee, owner):
        err = refusal(lambda k=key: k.fine_tuning.checkpoints.permissions.list(model), openai.AuthenticationError)
        assert err.code == "invalid_api_key"
        refusal(
            lambda k=key: k.fine_tuning.checkpoints.permissions.create(model, project_ids=[other_project.project_id]),
            openai.AuthenticationError,
        )

    # Revoked: a model that does not exist again.
    deleted = admin.fine_tuning.checkpoints.permissions.delete(permission.id, fine_tuned_model_checkpoint=model)
    assert (deleted.id, deleted.object, deleted.deleted) == (permission.id, "checkpoint.permission", True)
    same_words(grantee.models.retrieve, model, ghost)
    assert model not in [m.id for m in grantee.models.list()]
    assert list(admin.fine_tuning.checkpoints.permissions.list(model)) == []

    # The owner deleting the model takes its permissions with it.
    admin.fine_tuning.checkpoints.permissions.create(model, project_ids=[other_project.project_id])
    assert owner.models.delete(model).deleted
    assert model not in [m.id for m in grantee.models.list()]
    refusal(lambda: admin.fine_tuning.checkpoints.permissions.list(model))


def test_permission_requests_are_checked_and_listed_as_openai_lists_them(server, project, client, other_project):
    admin = admin_of(server)
    model = add_tuned_model(server, project, client)
    permissions = admin.fine_tuning.checkpoints.permissions
    third = server.new_project("third")

    err = refusal(lambda: permissions.create("ft:hone-tiny:x:y:ftjob-nope", project_ids=[third.project_id]))
    assert (err.code, err.param) == ("model_not_found", "fine_tuned_model_checkpoint")
    err = refusal(lambda: permissions.create("acme/tiny-chat", project_ids=[third.project_id]), openai.BadRequestError)
    assert err.code == "model_not_available" and "base model" in err.message
    err = refusal(lambda: permissions.create(model, project_ids=["proj_nope1", "proj_nope2"]), openai.BadRequestError)
    assert (err.code, err.param) == ("project_not_found", "project_ids")
    assert "proj_nope1" in err.message and "proj_nope2" in err.message
    err = refusal(lambda: permissions.create(model, project_ids=[project.project_id]), openai.BadRequestError)
    assert (err.code, err.param) == ("invalid_value", "project_ids") and "owns the model" in err.message
    refusal(lambda: permissions.create(model, project_ids=[]), openai.BadRequestError)
    err = refusal(
        lambda: permissions.create(model, project_ids=[third.project_id], extra_body={"projects": []}),
        openai.BadRequestError,
    )
    assert err.code == "unknown_parameter"
    assert list(permissions.list(model)) == []  # nothing was granted by the refused requests

    first = permissions.create(model, project_ids=[other_project.project_id, third.project_id, third.project_id])
    assert [p.project_id for p in first.data] == [other_project.project_id, third.project_id]
    again = permissions.create(model, project_ids=[third.project_id])  # granted already: the same permission
    assert [p.id for p in again.data] == [first.data[1].id]

    newest_first = [p.id for p in permissions.list(model, limit=1)]  # the SDK follows the cursor page by page
    assert newest_first == [first.data[1].id, first.data[0].id]
    page = permissions.list(model, limit=1, order="ascending")
    assert [p.id for p in page.data] == [first.data[0].id] and page.has_more
    assert [p.id for p in permissions.list(model, project_id=third.project_id)] == [first.data[1].id]
    with server.admin() as http:
        path = f"/v1/fine_tuning/checkpoints/{model}/permissions"
        bad = http.get(path, params={"order": "sideways"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "order"
        shape = http.get(path).json()
        assert set(shape) == {"object", "data", "first_id", "last_id", "has_more"}
        assert set(shape["data"][0]) == {"id", "object", "created_at", "project_id"}

    # A permission is deleted through its own model only.
    other_model = add_tuned_model(server, project, client)
    refusal(lambda: permissions.delete(first.data[0].id, fine_tuned_model_checkpoint=other_model))
    refusal(lambda: permissions.delete("cp_nope", fine_tuned_model_checkpoint=model))
    assert len(list(permissions.list(model))) == 2


def test_the_hone_sdk_and_cli_share_list_and_unshare(server, project, client, other_project):
    model = add_tuned_model(server, project, client)
    env = {"HONE_BASE_URL": server.base_url, "HONE_ADMIN_API_KEY": server.admin_key, "HONE_API_KEY": ""}
    runner = CliRunner()

    def hone_command(*args: str):
        return runner.invoke(hone_cli, list(args), env=env)

    shared = hone_command("models", "share", model, "--project", other_project.project_id, "--json")
    assert shared.exit_code == 0, shared.output
    [permission] = json.loads(shared.stdout)
    assert (permission["object"], permission["project_id"]) == ("checkpoint.permission", other_project.project_id)
    with hone.Client(base_url=server.base_url, admin_key=server.admin_key) as sdk:
        assert [p.id for p in sdk.models.permissions(model)] == [permission["id"]]
    assert model in [m.id for m in other_project.openai().models.list()]
    listed = hone_command("models", "permissions", model)
    assert listed.exit_code == 0 and permission["id"] in listed.stdout and other_project.project_id in listed.stdout

    unshared = hone_command("models", "unshare", model, "--project", other_project.project_id)
    assert unshared.exit_code == 0 and unshared.stdout.strip() == f"unshared {model} from {other_project.project_id}"
    assert model not in [m.id for m in other_project.openai().models.list()]
    again = hone_command("models", "unshare", model, "--project", other_project.project_id)
    assert again.exit_code == 1 and "is not shared with" in again.output
    with project.http() as http:  # a project key is refused as on every admin route, the owner's too
        refused = http.get(f"/v1/fine_tuning/checkpoints/{model}/permissions")
    assert refused.status_code == 401


# --- serving and continuing a shared model: the FAKE trainer and engine ------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    env = {**fake_trainer_env(step_s=0.01), "HONE_ENGINE_PYTHON": FAKE_ENGINE_PYTHON, "HONE_LOCAL_SLOTS": "1"}
    server = HoneServer(tmp_path_factory.mktemp("shared"), env)
    try:
        owner = server.new_project("owner")
        rows = [chat_line(f"question {i}?", f"answer {i}") for i in range(10)]
        job = tune_hone_tiny(owner.openai(), rows, n_epochs=2, batch_size=5)
        yield server, owner, job
    finally:
        server.stop()


def test_a_shared_model_is_served_and_continued_by_the_grantee_until_revoked(trained):
    server, owner, job = trained
    admin, owner_client = admin_of(server), owner.openai()
    grantee, third = server.new_project("grantee"), server.new_project("third")
    model = job.fine_tuned_model
    checkpoint = next(c.fine_tuned_model_checkpoint for c in owner_client.fine_tuning.jobs.checkpoints.list(job.id))
    [permission] = admin.fine_tuning.checkpoints.permissions.create(model, project_ids=[grantee.project_id]).data
    admin.fine_tuning.checkpoints.permissions.create(checkpoint, project_ids=[third.project_id])
    client = grantee.openai()

    # The grantee deploys its own endpoint of the owner's weights, and calls it through the gateway.
    with grantee.http() as http:
        created = http.post("/v1/endpoints", json={"model": model}).json()
        endpoint = wait_endpoint(http, model)
    assert endpoint["state"] == "ready", endpoint
    assert endpoint["fine_tuning_job_id"] is None and endpoint["checkpoint_id"] is None  # nothing of the owner's
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == answer_of(server.data_dir / "adapters" / created["id"])
    with owner.http() as http:
        assert http.get("/v1/endpoints").json()["data"] == []  # the grantee's endpoint is its own

    # It continues the model in a job of its own; the result is the grantee's, unseen by the owner.
    training = client.files.create(file=("more.jsonl", chat_dataset(10)), purpose="fine-tune").id
    continued = client.fine_tuning.jobs.create(model=model, training_file=training, hyperparameters={"n_epochs": 1})
    assert continued.model == model
    continued = wait_job(client, continued.id, lambda j: j.status == "succeeded")
    assert client.models.retrieve(continued.fine_tuned_model).owned_by == grantee.project_id
    assert continued.fine_tuned_model not in [m.id for m in owner_client.models.list()]
    refusal(lambda: owner_client.fine_tuning.jobs.retrieve(continued.id))

    # A checkpoint's permission shares that checkpoint, not the model.
    third_models = [m.id for m in third.openai().models.list()]
    assert checkpoint in third_models and model not in third_models
    refusal(lambda: third.openai().chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}]))

    # Revoked: the grantee's endpoint stops, and the model answers 404 in the gateway and everywhere else.
    admin.fine_tuning.checkpoints.permissions.delete(permission.id, fine_tuned_model_checkpoint=model)
    with grantee.http() as http:
        stopped = http.get(f"/v1/endpoints/{created['id']}").json()
        again = http.post("/v1/endpoints", json={"model": model})
    assert stopped["state"] == "stopped" and stopped["error"]["code"] == "model_unshared"
    assert again.status_code == 404 and again.json()["error"]["code"] == "model_not_found"
    err = refusal(lambda: client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}]))
    assert err.code == "model_not_found"
    wait_for(lambda: not (server.data_dir / "adapters" / created["id"]).exists(), 30, 0.2, "the stopped copy gone")

    # The owner deleting the model leaves its checkpoints, and so their permissions.
    owner_client.models.delete(model)
    assert checkpoint in [m.id for m in third.openai().models.list()]
