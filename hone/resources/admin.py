"""`client.projects` and `client.keys`: OpenAI-style administration, with the admin key."""

from __future__ import annotations

from hone.resources import Resource
from hone.types import DatasetGrant, Deleted, Project, ServiceAccount, WandbKey

PROJECTS = "/v1/organization/projects"


class Projects(Resource):
    def create(self, name: str, *, idempotency_key: str | None = None):
        return self._create(PROJECTS, json={"name": name}, cast=Project, admin=True, idempotency_key=idempotency_key)

    def list(self, *, include_archived: bool = False, limit: int = 100):
        return self._list(PROJECTS, Project, {"limit": limit, "include_archived": include_archived or None}, admin=True)

    def retrieve(self, project_id: str):
        return self._request("GET", f"{PROJECTS}/{project_id}", cast=Project, admin=True)

    def delete(self, project_id: str):
        """Archives the project: its keys stop working; its files, jobs and models are kept."""
        return self._request("DELETE", f"{PROJECTS}/{project_id}", cast=Deleted, admin=True)

    # Hone: the project's W&B key. Its jobs with a `wandb` integration log online with it, else offline.
    def set_wandb_key(self, project_id: str, api_key: str, *, base_url: str | None = None):
        body = {"api_key": api_key, **({"base_url": base_url} if base_url else {})}
        return self._request("PUT", f"{PROJECTS}/{project_id}/integrations/wandb", json=body, cast=WandbKey, admin=True)

    def wandb_key(self, project_id: str):
        """The key, redacted (the server never answers it whole)."""
        return self._request("GET", f"{PROJECTS}/{project_id}/integrations/wandb", cast=WandbKey, admin=True)

    def delete_wandb_key(self, project_id: str):
        return self._request("DELETE", f"{PROJECTS}/{project_id}/integrations/wandb", cast=WandbKey, admin=True)

    # Hone: the buckets and prefixes the project's Vertex dataset URIs may read (none until granted).
    def add_grant(self, project_id: str, uri: str, *, idempotency_key: str | None = None):
        """Grants s3://bucket/prefix/ or gs://bucket/prefix/; granting one the project has answers that grant."""
        return self._create(
            f"{PROJECTS}/{project_id}/dataset_grants",
            json={"uri": uri},
            cast=DatasetGrant,
            admin=True,
            idempotency_key=idempotency_key,
        )

    def list_grants(self, project_id: str, *, limit: int = 100):
        return self._list(f"{PROJECTS}/{project_id}/dataset_grants", DatasetGrant, {"limit": limit}, admin=True)

    def remove_grant(self, project_id: str, grant_id: str):
        return self._request("DELETE", f"{PROJECTS}/{project_id}/dataset_grants/{grant_id}", cast=Deleted, admin=True)


class Keys(Resource):
    """A project's API keys, as service accounts: `create` answers with the key's value, shown once."""

    def create(self, project_id: str, name: str = "default", *, idempotency_key: str | None = None):
        return self._create(
            f"{PROJECTS}/{project_id}/service_accounts",
            json={"name": name},
            cast=ServiceAccount,
            admin=True,
            idempotency_key=idempotency_key,
        )

    def list(self, project_id: str, *, limit: int = 100):
        return self._list(f"{PROJECTS}/{project_id}/service_accounts", ServiceAccount, {"limit": limit}, admin=True)

    def retrieve(self, project_id: str, service_account_id: str):
        return self._request(
            "GET", f"{PROJECTS}/{project_id}/service_accounts/{service_account_id}", cast=ServiceAccount, admin=True
        )

    def delete(self, project_id: str, service_account_id: str):
        return self._request(
            "DELETE", f"{PROJECTS}/{project_id}/service_accounts/{service_account_id}", cast=Deleted, admin=True
        )
