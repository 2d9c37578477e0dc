"""`client.projects` and `client.keys`: OpenAI-style administration, with the admin key."""

from __future__ import annotations

from openai._base_client import AsyncPaginator  # what openai's async lists return: awaitable and async-iterable
from openai.pagination import AsyncCursorPage, SyncCursorPage

from hone.resources import AsyncResource, SyncResource
from hone.types import DatasetGrant, Deleted, Project, ServiceAccount, WandbKey

PROJECTS = "/organization/projects"


def _wandb(project_id: str) -> str:
    return f"{PROJECTS}/{project_id}/integrations/wandb"


def _wandb_body(api_key: str, base_url: str | None) -> dict[str, str]:
    return {"api_key": api_key, **({"base_url": base_url} if base_url else {})}


class Projects(SyncResource):
    def create(self, name: str, *, idempotency_key: str | None = None) -> Project:
        options = self._settings.options(admin=True, create=True, idempotency_key=idempotency_key)
        return self._api.post(PROJECTS, body={"name": name}, cast_to=Project, options=options)

    def list(self, *, include_archived: bool = False, limit: int = 100) -> SyncCursorPage[Project]:
        options = self._settings.options(
            params={"limit": limit, "include_archived": include_archived or None}, admin=True
        )
        return self._api.get_api_list(PROJECTS, page=SyncCursorPage[Project], model=Project, options=options)

    def retrieve(self, project_id: str) -> Project:
        return self._api.get(f"{PROJECTS}/{project_id}", cast_to=Project, options=self._settings.options(admin=True))

    def delete(self, project_id: str) -> Deleted:
        """Archives the project: its keys stop working; its files, jobs and models are kept."""
        return self._api.delete(f"{PROJECTS}/{project_id}", cast_to=Deleted, options=self._settings.options(admin=True))

    # Hone: the project's W&B key. Its jobs with a `wandb` integration log online with it, else offline.
    def set_wandb_key(self, project_id: str, api_key: str, *, base_url: str | None = None) -> WandbKey:
        return self._api.put(
            _wandb(project_id),
            body=_wandb_body(api_key, base_url),
            cast_to=WandbKey,
            options=self._settings.options(admin=True),
        )

    def wandb_key(self, project_id: str) -> WandbKey:
        """The key, redacted (the server never answers it whole)."""
        return self._api.get(_wandb(project_id), cast_to=WandbKey, options=self._settings.options(admin=True))

    def delete_wandb_key(self, project_id: str) -> WandbKey:
        return self._api.delete(_wandb(project_id), cast_to=WandbKey, options=self._settings.options(admin=True))

    # Hone: the buckets and prefixes the project's Vertex dataset URIs may read (none until granted).
    def add_grant(self, project_id: str, uri: str, *, idempotency_key: str | None = None) -> DatasetGrant:
        """Grants s3://bucket/prefix/ or gs://bucket/prefix/; granting one the project has answers that grant."""
        options = self._settings.options(admin=True, create=True, idempotency_key=idempotency_key)
        return self._api.post(
            f"{PROJECTS}/{project_id}/dataset_grants", body={"uri": uri}, cast_to=DatasetGrant, options=options
        )

    def list_grants(self, project_id: str, *, limit: int = 100) -> SyncCursorPage[DatasetGrant]:
        return self._api.get_api_list(
            f"{PROJECTS}/{project_id}/dataset_grants",
            page=SyncCursorPage[DatasetGrant],
            model=DatasetGrant,
            options=self._settings.options(params={"limit": limit}, admin=True),
        )

    def remove_grant(self, project_id: str, grant_id: str) -> Deleted:
        return self._api.delete(
            f"{PROJECTS}/{project_id}/dataset_grants/{grant_id}",
            cast_to=Deleted,
            options=self._settings.options(admin=True),
        )


class Keys(SyncResource):
    """A project's API keys, as service accounts: `create` answers with the key's value, shown once."""

    def create(self, project_id: str, name: str = "default", *, idempotency_key: str | None = None) -> ServiceAccount:
        options = self._settings.options(admin=True, create=True, idempotency_key=idempotency_key)
        return self._api.post(
            f"{PROJECTS}/{project_id}/service_accounts", body={"name": name}, cast_to=ServiceAccount, options=options
        )

    def list(self, project_id: str, *, limit: int = 100) -> SyncCursorPage[ServiceAccount]:
        return self._api.get_api_list(
            f"{PROJECTS}/{project_id}/service_accounts",
            page=SyncCursorPage[ServiceAccount],
            model=ServiceAccount,
            options=self._settings.options(params={"limit": limit}, admin=True),
        )

    def retrieve(self, project_id: str, service_account_id: str) -> ServiceAccount:
        return self._api.get(
            f"{PROJECTS}/{project_id}/service_accounts/{service_account_id}",
            cast_to=ServiceAccount,
            options=self._settings.options(admin=True),
        )

    def delete(self, project_id: str, service_account_id: str) -> Deleted:
        return self._api.delete(
            f"{PROJECTS}/{project_id}/service_accounts/{service_account_id}",
            cast_to=Deleted,
            options=self._settings.options(admin=True),
        )


class AsyncProjects(AsyncResource):
    async def create(self, name: str, *, idempotency_key: str | None = None) -> Project:
        options = self._settings.options(admin=True, create=True, idempotency_key=idempotency_key)
        return await self._api.post(PROJECTS, body={"name": name}, cast_to=Project, options=options)

    def list(
        self, *, include_archived: bool = False, limit: int = 100
    ) -> AsyncPaginator[Project, AsyncCursorPage[Project]]:
        options = self._settings.options(
            params={"limit": limit, "include_archived": include_archived or None}, admin=True
        )
        return self._api.get_api_list(PROJECTS, page=AsyncCursorPage[Project], model=Project, options=options)

    async def retrieve(self, project_id: str) -> Project:
        return await self._api.get(
            f"{PROJECTS}/{project_id}", cast_to=Project, options=self._settings.options(admin=True)
        )

    async def delete(self, project_id: str) -> Deleted:
        return await self._api.delete(
            f"{PROJECTS}/{project_id}", cast_to=Deleted, options=self._settings.options(admin=True)
        )

    async def set_wandb_key(self, project_id: str, api_key: str, *, base_url: str | None = None) -> WandbKey:
        return await self._api.put(
            _wandb(project_id),
            body=_wandb_body(api_key, base_url),
            cast_to=WandbKey,
            options=self._settings.options(admin=True),
        )

    async def wandb_key(self, project_id: str) -> WandbKey:
        return await self._api.get(_wandb(project_id), cast_to=WandbKey, options=self._settings.options(admin=True))

    async def delete_wandb_key(self, project_id: str) -> WandbKey:
        return await self._api.delete(_wandb(project_id), cast_to=WandbKey, options=self._settings.options(admin=True))

    async def add_grant(self, project_id: str, uri: str, *, idempotency_key: str | None = None) -> DatasetGrant:
        options = self._settings.options(admin=True, create=True, idempotency_key=idempotency_key)
        return await self._api.post(
            f"{PROJECTS}/{project_id}/dataset_grants", body={"uri": uri}, cast_to=DatasetGrant, options=options
        )

    def list_grants(
        self, project_id: str, *, limit: int = 100
    ) -> AsyncPaginator[DatasetGrant, AsyncCursorPage[DatasetGrant]]:
        return self._api.get_api_list(
            f"{PROJECTS}/{project_id}/dataset_grants",
            page=AsyncCursorPage[DatasetGrant],
            model=DatasetGrant,
            options=self._settings.options(params={"limit": limit}, admin=True),
        )

    async def remove_grant(self, project_id: str, grant_id: str) -> Deleted:
        return await self._api.delete(
            f"{PROJECTS}/{project_id}/dataset_grants/{grant_id}",
            cast_to=Deleted,
            options=self._settings.options(admin=True),
        )


class AsyncKeys(AsyncResource):
    async def create(
        self, project_id: str, name: str = "default", *, idempotency_key: str | None = None
    ) -> ServiceAccount:
        options = self._settings.options(admin=True, create=True, idempotency_key=idempotency_key)
        return await self._api.post(
            f"{PROJECTS}/{project_id}/service_accounts", body={"name": name}, cast_to=ServiceAccount, options=options
        )

    def list(
        self, project_id: str, *, limit: int = 100
    ) -> AsyncPaginator[ServiceAccount, AsyncCursorPage[ServiceAccount]]:
        return self._api.get_api_list(
            f"{PROJECTS}/{project_id}/service_accounts",
            page=AsyncCursorPage[ServiceAccount],
            model=ServiceAccount,
            options=self._settings.options(params={"limit": limit}, admin=True),
        )

    async def retrieve(self, project_id: str, service_account_id: str) -> ServiceAccount:
        return await self._api.get(
            f"{PROJECTS}/{project_id}/service_accounts/{service_account_id}",
            cast_to=ServiceAccount,
            options=self._settings.options(admin=True),
        )

    async def delete(self, project_id: str, service_account_id: str) -> Deleted:
        return await self._api.delete(
            f"{PROJECTS}/{project_id}/service_accounts/{service_account_id}",
            cast_to=Deleted,
            options=self._settings.options(admin=True),
        )
