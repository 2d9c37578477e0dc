"""Vertex dataset URIs -> Hone files: a Hone file id as is; `s3://bucket/key` read from the S3-compatible store;
`gs://bucket/key` read from the bucket HONE_GCS_BUCKET_MAP maps it to there (the same name when unmapped).

Only objects under the project's dataset grants (service/dataset_grants.py) are read: a URI outside them answers
the same 404 whether or not its object exists, and nothing is read for it. A bucket object is imported once per
job as a fine-tune file of the caller's project, validated line by line on the way in; an invalid dataset is
refused whole, naming the line and field."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from service import dataset_grants
from service.auth import ProjectPrincipal
from service.context import AppContext
from service.errors import ErrorCode, InvalidRequest
from service.files import import_fine_tune_file
from service.storage.s3 import is_missing, shared_client

CHUNK = 1 << 20


@dataclass(frozen=True)
class ResolvedDataset:
    file_id: str
    imported: bool  # a file made for this request, to be removed again if the job is refused


@dataclass(frozen=True)
class BucketObject:
    location: dataset_grants.Location  # as the user wrote it: what grants are checked against
    bucket: str  # the S3 object it reads
    key: str


def bucket_object(settings, uri: str, field: str) -> BucketObject | None:
    """The object a gs:// or s3:// URI names, or None for a Hone file id. Refuses (400) what is not plainly an
    object's URI, or one in Hone's own storage; says nothing of whether the object exists or may be read."""
    if uri.startswith("file-") and "://" not in uri:
        return None
    if uri.partition("://")[0].lower() not in dataset_grants.SCHEMES:
        raise InvalidRequest(
            f"{field} must be gs://bucket/path.jsonl, s3://bucket/path.jsonl or the id of an "
            f"uploaded fine-tune file, got '{uri[:200]}'.",
            param=field,
            code=ErrorCode.INVALID_DATASET_URI,
        )
    location = dataset_grants.parse(uri, field, prefix=False)
    if not location.path.lower().endswith(".jsonl"):
        raise InvalidRequest(
            f"{field} should be an object of type JSONL (a name ending in .jsonl), got '{uri[:200]}'.",
            param=field,
            code=ErrorCode.INVALID_DATASET_URI,
        )
    bucket, key = dataset_grants.s3_target(settings, location)
    if dataset_grants.reaches_own_storage(settings, bucket, key, prefix=False):
        # Hone's own blobs hold every project's files: reachable by file id only, within the project.
        raise InvalidRequest(
            f"{field} points into Hone's own storage; pass the file's id instead.",
            param=field,
            code=ErrorCode.INVALID_DATASET_URI,
        )
    return BucketObject(location, bucket, key)


def _object_chunks(client, obj: BucketObject, uri: str, field: str) -> Iterator[bytes]:
    try:
        body = client.get_object(Bucket=obj.bucket, Key=obj.key)["Body"]
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if is_missing(err):
            raise InvalidRequest(
                f"{field}: {uri} does not exist (read as s3://{obj.bucket}/{obj.key}).",
                param=field,
                code=ErrorCode.DATASET_NOT_FOUND,
            ) from None
        raise InvalidRequest(
            f"{field}: {uri} cannot be read ({code or err}).", param=field, code=ErrorCode.DATASET_UNREADABLE
        ) from None
    except BotoCoreError as err:
        raise InvalidRequest(
            f"{field}: {uri} cannot be read: {err}.", param=field, code=ErrorCode.DATASET_UNREADABLE
        ) from None
    try:
        yield from body.iter_chunks(CHUNK)
    except (BotoCoreError, ClientError) as err:
        raise InvalidRequest(
            f"{field}: reading {uri} failed: {err}.", param=field, code=ErrorCode.DATASET_UNREADABLE
        ) from None
    finally:
        body.close()


def resolve_dataset(ctx: AppContext, principal: ProjectPrincipal, uri: str, field: str) -> ResolvedDataset:
    obj = bucket_object(ctx.settings, uri, field)
    if obj is None:
        return ResolvedDataset(uri, imported=False)  # the job's own checks find it, or say why not
    dataset_grants.check_readable(ctx, principal.project_id, obj.location, uri, field)  # before anything is read
    client = shared_client(
        ctx.settings.storage.s3_endpoint_url, ctx.settings.storage.s3_max_attempts, ctx.settings.storage.s3_timeout_s
    )
    filename = obj.key.rsplit("/", 1)[-1]
    row = import_fine_tune_file(
        ctx, principal, filename, _object_chunks(client, obj, uri, field), param=field, source=uri
    )
    return ResolvedDataset(row.id, imported=True)
