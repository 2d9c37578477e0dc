"""`client.models`: base models and this project's tuned models."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote

from hone.resources import Resource
from hone.types import Deleted, Model, Page
from hone_kernel.weights_archive import verify


def model_path(model_id: str) -> str:
    # Ids hold ':' (tuned models) and '/' (Hugging Face names); the server's routes take both encoded.
    return "/v1/models/" + quote(model_id, safe=":")


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

    def delete(self, model_id: str):
        """Deletes a tuned model: its endpoints stop and its weights go."""
        return self._request("DELETE", model_path(model_id), cast=Deleted)
