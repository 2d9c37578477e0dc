"""Where a Vertex request points (`projects/{project}/locations/{location}`), resource names and timestamps."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from service.auth import ProjectPrincipal
from service.errors import ErrorCode, InvalidRequest, NotFound, excerpt

_LOCATION = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_RESOURCE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # Hone's ids; never a ':verb' suffix


@dataclass(frozen=True)
class VertexScope:
    """The caller's project and the location its request named. Hone has no regions: any location is
    accepted and echoed, so clients configured for a Vertex region work unchanged."""

    principal: ProjectPrincipal
    location: str

    @property
    def parent(self) -> str:
        # Named by the project's id, whichever alias the request used (as Vertex answers with project numbers).
        return f"projects/{self.principal.project_id}/locations/{self.location}"

    def name(self, collection: str, resource_id: str) -> str:
        return f"{self.parent}/{collection}/{resource_id}"

    def not_found(self, collection: str, resource_id: str) -> NotFound:
        kind = {"tuningJobs": "TuningJob", "endpoints": "Endpoint"}[collection]
        return NotFound(
            f"{kind} '{self.name(collection, resource_id)}' was not found.", param="name", code=ErrorCode.NOT_FOUND
        )


def scope_for(principal: ProjectPrincipal, project: str, location: str) -> VertexScope:
    """The `{project}` path segment must be the key's project, by id or by its slug; another project's
    resources do not exist for this key (404, as for every other Hone resource)."""
    if project not in (principal.project_id, principal.project_slug):
        raise NotFound(
            f"Project '{excerpt(project)}' was not found, or this API key does not belong to it.",
            param="project",
            code=ErrorCode.PROJECT_NOT_FOUND,
        )
    if not _LOCATION.match(location):
        raise InvalidRequest(f"Invalid location '{location}'.", param="location", code=ErrorCode.INVALID_LOCATION)
    return VertexScope(principal, location)


def check_id(resource_id: str, kind: str) -> str:
    if not _RESOURCE_ID.match(resource_id):
        raise NotFound(f"{kind} '{excerpt(resource_id)}' was not found.", param="name", code=ErrorCode.NOT_FOUND)
    return resource_id


def rfc3339(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_rfc3339(value: str) -> int:
    """Epoch seconds of an RFC 3339 timestamp (`Z` or an offset; nanoseconds are cut to microseconds)."""
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip()).replace("Z", "+00:00").replace("z", "+00:00")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {value!r} has no time zone")
    return int(moment.timestamp())
