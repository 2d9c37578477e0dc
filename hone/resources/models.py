"""`client.models`: base models and this project's tuned models."""

from __future__ import annotations

from urllib.parse import quote

from hone.resources import Resource
from hone.types import Deleted, Model, Page


def model_path(model_id: str) -> str:
    # Ids hold ':' (tuned models) and '/' (Hugging Face names); the server's routes take both encoded.
    return "/v1/models/" + quote(model_id, safe=":")


class Models(Resource):
    def list(self):
        """Every model this key can use (one request: the models list is not paginated). A Page."""
        return self._request("GET", "/v1/models", cast=Page[Model])

    def retrieve(self, model_id: str):
        return self._request("GET", model_path(model_id), cast=Model)

    def delete(self, model_id: str):
        """Deletes a tuned model: its endpoints stop and its weights go."""
        return self._request("DELETE", model_path(model_id), cast=Deleted)
