"""`client.models`: base models and this project's tuned models (openai's `models`), and Hone's extensions:
downloading and importing weights, sharing with other projects (OpenAI's checkpoint permissions, admin key)."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO
from urllib.parse import quote

from openai._base_client import AsyncPaginator  # what openai's async lists return: awaitable and async-iterable
from openai.pagination import AsyncCursorPage, AsyncPage, SyncCursorPage, SyncPage

from hone.resources import AsyncResource, SyncResource
from hone.types import CheckpointPermission, CheckpointPermissionList, Deleted, Model, ModelDeleted
from hone_kernel.weights_archive import pack, verify


def model_path(model_id: str) -> str:
    # Ids hold ':' (tuned models) and '/' (Hugging Face names); the server's routes take both encoded.
    return "/models/" + quote(model_id, safe=":")


def permissions_path(model_id: str) -> str:
    return "/fine_tuning/checkpoints/" + quote(model_id, safe=":") + "/permissions"


def _save(model_id: str, data: bytes, path: str | os.PathLike[str] | None) -> Path:
    verify(data)
    target = Path(path) if path is not None else Path(re.sub(r"[^A-Za-z0-9._-]+", "-", model_id).strip("-") + ".tar")
    partial = target.with_name(target.name + ".part")
    partial.write_bytes(data)
    partial.replace(target)
    return target


class _Import:
    """An adapter to import, as the tar a download saves: a folder is packed on the fly (with SHA256SUMS) into a
    temporary file; a .tar or .tar.gz is streamed as it is. Never read into memory whole."""

    def __init__(self, path: str | os.PathLike[str], base_model: str, suffix: str | None) -> None:
        source = Path(path)
        self.stream: IO[bytes]
        if source.is_dir():
            self.stream, self.name = tempfile.TemporaryFile(), f"{source.resolve().name or 'adapter'}.tar"
            pack(source, self.stream)
            self.stream.seek(0)
        else:
            self.stream, self.name = source.open("rb"), source.name
        self.data = {"base_model": base_model} | ({"suffix": suffix} if suffix else {})

    def files(self) -> list[tuple[str, tuple[str, IO[bytes], str]]]:
        return [("file", (self.name, self.stream, "application/x-tar"))]


class Models(SyncResource):
    def list(self) -> SyncPage[Model]:
        """Every model this key can use (the models list is one page)."""
        return self._api.models.list()

    def retrieve(self, model_id: str) -> Model:
        return self._api.models.retrieve(model_id)

    def delete(self, model_id: str) -> ModelDeleted:
        """Deletes a tuned model: its endpoints stop and its weights go."""
        return self._api.models.delete(model_id)

    def download(self, model_id: str, path: str | os.PathLike[str] | None = None) -> Path:
        """Saves a tuned model's (or checkpoint's) weights as a tar archive (adapter or full weights, tokenizer and
        Hone's serving files) at `path` (default: the name the server gives, here), after checking every file
        against the archive's SHA256SUMS; a mismatch raises ValueError and nothing is left at `path`."""
        return _save(model_id, self._api.get(model_path(model_id) + "/content", cast_to=bytes), path)

    def import_adapter(
        self,
        path: str | os.PathLike[str],
        *,
        base_model: str,
        suffix: str | None = None,
        idempotency_key: str | None = None,
    ) -> Model:
        """Imports a PEFT LoRA adapter trained elsewhere (peft, TRL) for `base_model`, a base model of the server:
        `path` is the adapter's folder (packed on the fly as a download's tar, with SHA256SUMS) or a .tar / .tar.gz
        of it, as `download` saves one. The server checks it whole against the base model (its config, and every
        tensor's name and shape) before storing anything; the new tuned model (`ft:{base}:{project}:{suffix}:...`)
        is returned, to deploy, call and continue like a job's. Streamed from disk, never read into memory whole."""
        upload = _Import(path, base_model, suffix)
        try:
            return self._api.post(
                "/models/import",
                body=upload.data,
                files=upload.files(),
                cast_to=Model,
                options=self._settings.options(create=True, idempotency_key=idempotency_key, multipart=True),
            )
        finally:
            upload.stream.close()

    # Sharing with other projects: OpenAI's checkpoint permissions, with the admin key.
    def share(self, model_id: str, project_ids: Iterable[str]) -> CheckpointPermissionList:
        """Lets each project use a tuned model or checkpoint (list, serve, call, continue; not delete or download).
        The permissions, one per project (one it had already is answered as it is)."""
        return self._api.post(
            permissions_path(model_id),
            body={"project_ids": list(project_ids)},
            cast_to=CheckpointPermissionList,
            options=self._settings.options(admin=True),
        )

    def permissions(
        self, model_id: str, *, project_id: str | None = None, limit: int = 100
    ) -> SyncCursorPage[CheckpointPermission]:
        """The projects a tuned model or checkpoint is shared with, newest first (auto-paging)."""
        return self._api.get_api_list(
            permissions_path(model_id),
            page=SyncCursorPage[CheckpointPermission],
            model=CheckpointPermission,
            options=self._settings.options(params={"limit": limit, "project_id": project_id}, admin=True),
        )

    def unshare(self, model_id: str, permission_id: str) -> Deleted:
        """Revokes a permission: the project's endpoints of the model stop, and it can no longer use it."""
        return self._api.delete(
            f"{permissions_path(model_id)}/{permission_id}", cast_to=Deleted, options=self._settings.options(admin=True)
        )


class AsyncModels(AsyncResource):
    async def list(self) -> AsyncPage[Model]:
        return await self._api.models.list()

    async def retrieve(self, model_id: str) -> Model:
        return await self._api.models.retrieve(model_id)

    async def delete(self, model_id: str) -> ModelDeleted:
        return await self._api.models.delete(model_id)

    async def download(self, model_id: str, path: str | os.PathLike[str] | None = None) -> Path:
        return _save(model_id, await self._api.get(model_path(model_id) + "/content", cast_to=bytes), path)

    async def import_adapter(
        self,
        path: str | os.PathLike[str],
        *,
        base_model: str,
        suffix: str | None = None,
        idempotency_key: str | None = None,
    ) -> Model:
        upload = _Import(path, base_model, suffix)
        try:
            return await self._api.post(
                "/models/import",
                body=upload.data,
                files=upload.files(),
                cast_to=Model,
                options=self._settings.options(create=True, idempotency_key=idempotency_key, multipart=True),
            )
        finally:
            upload.stream.close()

    async def share(self, model_id: str, project_ids: Iterable[str]) -> CheckpointPermissionList:
        return await self._api.post(
            permissions_path(model_id),
            body={"project_ids": list(project_ids)},
            cast_to=CheckpointPermissionList,
            options=self._settings.options(admin=True),
        )

    def permissions(
        self, model_id: str, *, project_id: str | None = None, limit: int = 100
    ) -> AsyncPaginator[CheckpointPermission, AsyncCursorPage[CheckpointPermission]]:
        return self._api.get_api_list(
            permissions_path(model_id),
            page=AsyncCursorPage[CheckpointPermission],
            model=CheckpointPermission,
            options=self._settings.options(params={"limit": limit, "project_id": project_id}, admin=True),
        )

    async def unshare(self, model_id: str, permission_id: str) -> Deleted:
        return await self._api.delete(
            f"{permissions_path(model_id)}/{permission_id}", cast_to=Deleted, options=self._settings.options(admin=True)
        )
