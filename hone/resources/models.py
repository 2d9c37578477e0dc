"""`client.models`: base models and this project's tuned models."""

from __future__ import annotations

import inspect
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from hone.resources import Resource
from hone.resources.files import _closing_after
from hone.types import CheckpointPermission, Deleted, Model, Page
from hone_kernel.weights_archive import pack, verify


def model_path(model_id: str) -> str:
    # Ids hold ':' (tuned models) and '/' (Hugging Face names); the server's routes take both encoded.
    return "/v1/models/" + quote(model_id, safe=":")


def permissions_path(model_id: str) -> str:
    return "/v1/fine_tuning/checkpoints/" + quote(model_id, safe=":") + "/permissions"


class Models(Resource):
    def list(self):
        """Every model this key can use (one request: the models list is not paginated). A Page."""
        return self._request("GET", "/v1/models", cast=Page[Model])

    def retrieve(self, model_id: str):
        return self._request("GET", model_path(model_id), cast=Model)

    def download(self, model_id: str, path: str | os.PathLike | None = None) -> Path:
        """Saves a tuned model's (or checkpoint's) weights as a tar archive (adapter or full weights, tokenizer and
        Hone's serving files) at `path` (default: the name the server gives, here), after checking every file
        against the archive's SHA256SUMS; a mismatch raises ValueError and nothing is left at `path`."""
        data = self._request("GET", model_path(model_id) + "/content", cast=bytes)
        verify(data)
        target = (
            Path(path) if path is not None else Path(re.sub(r"[^A-Za-z0-9._-]+", "-", model_id).strip("-") + ".tar")
        )
        partial = target.with_name(target.name + ".part")
        partial.write_bytes(data)
        partial.replace(target)
        return target

    def import_adapter(
        self,
        path: str | os.PathLike,
        *,
        base_model: str,
        suffix: str | None = None,
        idempotency_key: str | None = None,
    ) -> Any:
        """Imports a PEFT LoRA adapter trained elsewhere (peft, TRL) for `base_model`, a base model of the server:
        `path` is the adapter's folder (packed on the fly as a download's tar, with SHA256SUMS) or a .tar / .tar.gz
        of it, as `download` saves one. The server checks it whole against the base model (its config, and every
        tensor's name and shape) before storing anything; the new tuned model (`ft:{base}:{project}:{suffix}:...`)
        is returned, to deploy, call and continue like a job's. Streamed from disk, never read into memory whole."""
        source = Path(path)
        stream: IO[bytes]
        if source.is_dir():
            stream, name = tempfile.TemporaryFile(), f"{source.resolve().name or 'adapter'}.tar"
            pack(source, stream)
            stream.seek(0)
        else:
            stream, name = source.open("rb"), source.name
        data = {"base_model": base_model} | ({"suffix": suffix} if suffix else {})
        try:
            result = self._create(
                "/v1/models/import",
                multipart=lambda: ({"file": (name, stream, "application/x-tar")}, data),
                cast=Model,
                idempotency_key=idempotency_key,
            )
        except BaseException:
            stream.close()
            raise
        if inspect.isawaitable(result):
            return _closing_after(result, stream)  # AsyncClient: the upload happens when awaited
        stream.close()
        return result

    def delete(self, model_id: str):
        """Deletes a tuned model: its endpoints stop and its weights go."""
        return self._request("DELETE", model_path(model_id), cast=Deleted)

    # Sharing with other projects: OpenAI's checkpoint permissions, with the admin key.
    def share(self, model_id: str, project_ids: Iterable[str]):
        """Lets each project use a tuned model or checkpoint (list, serve, call, continue; not delete or download).
        A Page of the permissions, one per project (one it had already is answered as it is)."""
        body = {"project_ids": list(project_ids)}
        return self._request("POST", permissions_path(model_id), json=body, cast=Page[CheckpointPermission], admin=True)

    def permissions(self, model_id: str, *, project_id: str | None = None, limit: int = 100):
        """The projects a tuned model or checkpoint is shared with, newest first (an auto-paging iterator)."""
        params = {"limit": limit, "project_id": project_id}
        return self._list(permissions_path(model_id), CheckpointPermission, params, admin=True)

    def unshare(self, model_id: str, permission_id: str):
        """Revokes a permission: the project's endpoints of the model stop, and it can no longer use it."""
        return self._request("DELETE", f"{permissions_path(model_id)}/{permission_id}", cast=Deleted, admin=True)
