"""Dataset grants: the buckets and prefixes whose objects a project's Vertex dataset URIs may read. None by
default; an admin grants them (Hone's extension of the Administration API).

A URI is checked as the user wrote it, against grants written in the same scheme: `gs://b/p/` grants
`gs://b/p/...` (whatever bucket HONE_GCS_BUCKET_MAP reads it from), never `s3://...`, and the reverse. Grants
match by bucket and by path prefix on segment boundaries (`s3://b/a/` grants `s3://b/a/x.jsonl`, not
`s3://b/ab/x.jsonl`). URIs that could read otherwise than they are written (`.`/`..` or empty segments,
percent-encoding, backslashes, `?`, `#`, control characters, a bucket with a port or user) are refused, not
normalised away. A URI outside every grant answers the same 404 whether or not its object exists, before anything
is read; a grant (or URI) that reaches Hone's own storage is refused."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from urllib.parse import urlparse

from sqlalchemy import select

from service.context import AppContext
from service.db.tables import DatasetGrant
from service.errors import ErrorCode, InvalidRequest, NotFound, excerpt
from service.ids import new_id
from service.pagination import list_envelope, paginate
from service.projects import active_project, project_row

SCHEMES = ("s3", "gs")
MAX_URI = 1024
# S3's and GCS's bucket names, loosely: lower case, digits, '.', '-', '_'; nothing that could carry a port or user.
_BUCKET = re.compile(r"^[a-z0-9](?:[a-z0-9._-]{0,220}[a-z0-9])?$")
_FORBIDDEN = re.compile(r"[%\\?#\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Location:
    """A normalised `scheme://bucket/path`: an object's key, or a grant's prefix ('' or ending in '/')."""

    scheme: str
    bucket: str
    path: str

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.path}"


def parse(uri: str, param: str, *, prefix: bool) -> Location:
    """A dataset URI (prefix=False: an object) or a grant (prefix=True: a bucket, or a prefix that is made to end
    in '/'), refused with a 400 naming `param` when it is not plainly one."""
    kind = (
        "gs://bucket/prefix/ or s3://bucket/prefix/" if prefix else "gs://bucket/path.jsonl or s3://bucket/path.jsonl"
    )
    scheme, sep, rest = uri.partition("://")

    def refuse(why: str):
        return InvalidRequest(
            f"'{param}' must be {kind}: {why}, got '{excerpt(uri, 200)}'.",
            param=param,
            code=ErrorCode.INVALID_DATASET_URI,
        )

    if not sep or scheme.lower() not in SCHEMES:
        raise refuse("the scheme must be gs or s3")
    if len(uri) > MAX_URI:
        raise refuse(f"at most {MAX_URI} characters")
    bucket, _, path = rest.partition("/")
    if not _BUCKET.match(bucket):
        raise refuse("the bucket name may hold only lower-case letters, digits, '.', '-' and '_'")
    if _FORBIDDEN.search(path):
        raise refuse("percent-encoding, '\\', '?', '#' and control characters are not accepted in the path")
    if prefix and path.endswith("/"):
        path = path[:-1]
    segments = path.split("/") if path else []
    if not prefix and not segments:
        raise refuse("the URI names a bucket, not an object")
    if any(s in ("", ".", "..") for s in segments):
        raise refuse("empty, '.' and '..' path segments are not accepted")
    path = "/".join(segments)
    return Location(scheme.lower(), bucket, path + "/" if prefix and path else path)


def s3_target(settings, location: Location) -> tuple[str, str]:
    """The S3 bucket and key (or prefix) a location reads: gs:// through HONE_GCS_BUCKET_MAP (the same bucket name
    when unmapped)."""
    if location.scheme == "s3":
        return location.bucket, location.path
    target, _, mapped = settings.storage.gcs_bucket_map.get(location.bucket, location.bucket).partition("/")
    mapped = mapped.strip("/")
    return target, f"{mapped}/{location.path}" if mapped else location.path


def reaches_own_storage(settings, bucket: str, path: str, *, prefix: bool) -> bool:
    """Whether s3://bucket/path is inside Hone's own storage (which holds every project's files) or, for a prefix,
    whether any object under it could be."""
    storage = urlparse(settings.resolved_storage_url)
    if storage.scheme != "s3" or bucket != storage.netloc:
        return False
    own = storage.path.strip("/")
    if not own:
        return True
    own += "/"
    return path.startswith(own) or (prefix and own.startswith(path))


def covers(grant: DatasetGrant, location: Location) -> bool:
    # grant.prefix is '' or ends in '/', and an object's path has no empty or dot segments: a segment boundary.
    return (
        grant.scheme == location.scheme and grant.bucket == location.bucket and location.path.startswith(grant.prefix)
    )


def check_readable(ctx: AppContext, project_id: str, location: Location, uri: str, field: str) -> None:
    """Raises the same 404 for an object outside the project's grants whether or not it exists (nothing is read)."""
    with ctx.db.read() as session:
        grants = (
            session.execute(
                select(DatasetGrant).where(
                    DatasetGrant.project_id == project_id,
                    DatasetGrant.scheme == location.scheme,
                    DatasetGrant.bucket == location.bucket,
                )
            )
            .scalars()
            .all()
        )
    if not any(covers(g, location) for g in grants):
        raise NotFound(
            f"{field}: {excerpt(uri, 200)} was not found, or is outside the buckets and prefixes this project "
            "may read (an admin grants them: dataset_grants).",
            param=field,
            code=ErrorCode.DATASET_NOT_FOUND,
        )


def check_output_prefix(ctx: AppContext, project_id: str, uri: str, field: str) -> Location:
    """A prefix the project may have results written under: inside one of its grants (which cover what it may read
    and, for evaluation results, write), and never inside Hone's own storage. Refused as a missing one otherwise."""
    location = parse(uri, field, prefix=True)
    bucket, path = s3_target(ctx.settings, location)
    if reaches_own_storage(ctx.settings, bucket, path, prefix=True):
        raise InvalidRequest(
            f"{field} points into Hone's own storage.", param=field, code=ErrorCode.INVALID_DATASET_URI
        )
    check_readable(ctx, project_id, location, uri, field)
    return location


def write_under(ctx: AppContext, prefix_uri: str, name: str, data: bytes) -> str | None:
    """Writes `name` under a prefix checked by check_output_prefix; the error, in a line, when the store refused."""
    from service.storage.s3 import bounded_client

    location = parse(prefix_uri, "outputUriPrefix", prefix=True)
    bucket, path = s3_target(ctx.settings, location)
    storage = ctx.settings.storage
    try:
        client = bounded_client(storage.s3_endpoint_url, storage.s3_max_attempts, storage.s3_timeout_s)
        client.put_object(Bucket=bucket, Key=f"{path}{name}", Body=data)
    except Exception as exc:  # the user's bucket: its failure is the evaluation's to report, not the loop's
        return f"could not write {location.uri}{name}: {str(exc).splitlines()[0][:300]}"
    return None


# --- the admin API -------------------------------------------------------------------------------------------


def grant_api(row: DatasetGrant) -> dict:
    return {
        "object": "organization.project.dataset_grant",
        "id": row.id,
        "project_id": row.project_id,
        "uri": row.uri,
        "created_at": row.created_at,
    }


def create_grant(ctx: AppContext, project_id: str, uri: str) -> dict:
    """Grants a bucket or prefix; granting one the project already has answers that grant."""
    location = parse(uri, "uri", prefix=True)
    bucket, path = s3_target(ctx.settings, location)
    if reaches_own_storage(ctx.settings, bucket, path, prefix=True):
        raise InvalidRequest(
            f"'uri' {location.uri} reaches Hone's own storage (s3://{bucket}/{path}), which holds "
            "every project's files: it cannot be granted.",
            param="uri",
            code=ErrorCode.OWN_STORAGE,
        )
    with ctx.db.write() as session:
        active_project(session, project_id)
        existing = session.execute(
            select(DatasetGrant).where(DatasetGrant.project_id == project_id, DatasetGrant.uri == location.uri)
        ).scalar()
        if existing is not None:
            return grant_api(existing)
        row = DatasetGrant(
            id=new_id("dsgrant_"),
            project_id=project_id,
            uri=location.uri,
            scheme=location.scheme,
            bucket=location.bucket,
            prefix=location.path,
            created_at=int(time.time()),
        )
        session.add(row)
        session.flush()
        return grant_api(row)


def list_grants(ctx: AppContext, project_id: str, *, after: str | None, limit: int) -> dict:
    with ctx.db.read() as session:
        project_row(session, project_id)
        stmt = select(DatasetGrant).where(DatasetGrant.project_id == project_id)
        rows, has_more = paginate(session, stmt, DatasetGrant, after=after, limit=limit, newest_first=False)
        return list_envelope([grant_api(r) for r in rows], has_more, with_ids=True)


def delete_grant(ctx: AppContext, project_id: str, grant_id: str) -> dict:
    with ctx.db.write() as session:
        project_row(session, project_id)
        row = session.execute(
            select(DatasetGrant).where(DatasetGrant.id == grant_id, DatasetGrant.project_id == project_id)
        ).scalar()
        if row is None:
            raise NotFound(f"No such dataset grant: {excerpt(grant_id)}", param="grant_id", code=ErrorCode.NOT_FOUND)
        session.delete(row)
    return {"object": "organization.project.dataset_grant.deleted", "id": grant_id, "deleted": True}
