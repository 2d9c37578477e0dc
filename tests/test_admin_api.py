"""Projects and service-account keys over the OpenAI-Administration-shaped routes and the `hone` CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import openai
import pytest
from sqlalchemy import create_engine, text


def _all_project_ids(admin, include_archived: bool = False) -> list[str]:
    """Every page: the session's server holds the projects of every module that ran on it (over 100)."""
    ids: list[str] = []
    after = None
    while True:
        params = {
            "limit": 100,
            **({"include_archived": "true"} if include_archived else {}),
            **({"after": after} if after else {}),
        }
        page = admin.get("/v1/organization/projects", params=params).json()
        ids += [p["id"] for p in page["data"]]
        if not page["has_more"]:
            return ids
        after = page["last_id"]


def test_projects_and_keys_lifecycle(server):
    with server.admin() as admin:
        project = admin.post("/v1/organization/projects", json={"name": "Team Search"}).json()
        assert project["object"] == "organization.project" and project["id"].startswith("proj_")
        assert (project["name"], project["status"], project["archived_at"]) == ("Team Search", "active", None)
        assert admin.get(f"/v1/organization/projects/{project['id']}").json() == project

        account = admin.post(f"/v1/organization/projects/{project['id']}/service_accounts", json={"name": "ci"}).json()
        key = account["api_key"]["value"]
        assert account["object"] == "organization.project.service_account" and key.startswith("sk-hone-")

        # The key works, is shown once, and is stored only as a hash.
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key, max_retries=0)
        assert client.files.list().data == []
        fetched = admin.get(f"/v1/organization/projects/{project['id']}/service_accounts/{account['id']}").json()
        assert "value" not in fetched["api_key"] and fetched["api_key"]["redacted_value"].startswith(key[:10])
        engine = create_engine(server.database_url)
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT key_hash FROM api_keys")).scalars().all()
        engine.dispose()
        assert key not in stored and len(stored[0]) == 64

        listed = admin.get(f"/v1/organization/projects/{project['id']}/service_accounts").json()
        assert [a["id"] for a in listed["data"]] == [account["id"]] and listed["has_more"] is False

        deleted = admin.delete(f"/v1/organization/projects/{project['id']}/service_accounts/{account['id']}").json()
        assert deleted == {
            "object": "organization.project.service_account.deleted",
            "id": account["id"],
            "deleted": True,
        }
        with pytest.raises(openai.AuthenticationError):
            client.files.list()

        # Archiving a project revokes its keys.
        account2 = admin.post(f"/v1/organization/projects/{project['id']}/service_accounts", json={"name": "b"}).json()
        client2 = openai.OpenAI(base_url=server.base_url + "/v1", api_key=account2["api_key"]["value"], max_retries=0)
        assert client2.models.list().data
        assert admin.delete(f"/v1/organization/projects/{project['id']}").json()["deleted"] is True
        with pytest.raises(openai.AuthenticationError):
            client2.models.list()
        assert admin.get(f"/v1/organization/projects/{project['id']}").json()["status"] == "archived"
        assert project["id"] not in _all_project_ids(admin)
        assert project["id"] in _all_project_ids(admin, include_archived=True)
        resp = admin.post(f"/v1/organization/projects/{project['id']}/service_accounts", json={"name": "c"})
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "project_archived"


def test_admin_errors(server):
    with server.admin() as admin:
        resp = admin.post("/v1/organization/projects", json={})
        assert resp.status_code == 400 and resp.json()["error"]["param"] == "name"
        resp = admin.get("/v1/organization/projects/proj_missing")
        assert resp.status_code == 404 and resp.json()["error"]["param"] == "project_id"
    resp = httpx.get(server.base_url + "/v1/organization/projects", headers={"Authorization": "Bearer nope"})
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"


def hone(server, *args: str) -> subprocess.CompletedProcess:
    env = {"HONE_BASE_URL": server.base_url, "HONE_ADMIN_API_KEY": server.admin_key, "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "hone", *args], env=env, capture_output=True, text=True, timeout=60)


def test_cli_projects_and_keys(server):
    created = hone(server, "projects", "create", "cli project")
    assert created.returncode == 0, created.stderr
    project_id = created.stdout.strip()
    assert project_id.startswith("proj_")
    assert project_id in hone(server, "projects", "list").stdout

    key = hone(server, "keys", "create", project_id, "--name", "bot")
    assert key.returncode == 0 and key.stdout.strip().startswith("sk-hone-")
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key=key.stdout.strip(), max_retries=0)
    assert client.models.list().data

    accounts = json.loads(hone(server, "keys", "list", project_id, "--json").stdout)
    assert [a["name"] for a in accounts] == ["bot"]
    assert hone(server, "keys", "delete", project_id, accounts[0]["id"]).returncode == 0
    with pytest.raises(openai.AuthenticationError):
        client.models.list()

    assert hone(server, "projects", "delete", project_id).returncode == 0
    missing = hone(server, "projects", "delete", "proj_missing")
    assert missing.returncode == 1 and "No such project" in missing.stderr
    env_bad = hone(server, "projects", "list", "--admin-key", "wrong")
    assert env_bad.returncode == 1 and "Incorrect admin API key" in env_bad.stderr
