"""Images a fine-tune file names by reference: the id of a file the project uploaded with purpose "vision", or an
`s3://` / `gs://` object under the project's dataset grants (service/dataset_grants.py). At upload each is read,
checked as an embedded image is (format by its bytes, size, it decodes: hone_kernel.images), and copied beside the
file (`file-images/{id}/{n}`), so training reads exactly the bytes that were checked whatever happens to the
original later. The file's `dataset_media.objects` maps each reference to its copy; the trainer and the job's
evaluation put the copies back into the lines as data URLs (hone_kernel.dataset_images.inline_lines).

A reference another project's file or an object outside the grants reads as missing, in the same words whether or
not it exists."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import select

from hone_kernel.dataset_images import inline_lines
from hone_kernel.dataset_lines import dataset_lines
from hone_kernel.datasets import DatasetReport, LineError
from hone_kernel.images import GEMINI_LIMITS, OPENAI_LIMITS, ImageError, check_bytes
from service import dataset_grants
from service.context import AppContext
from service.db.tables import File
from service.errors import ApiError, NotFound
from service.storage import BlobNotFound
from service.storage.s3 import is_missing, shared_client

IMAGES_PREFIX = "file-images/"  # {file id}/{n}: beside files/, not under a file's own key (a folder on disk)
VISION_PURPOSES = ("vision", "user_data")  # OpenAI's purposes for images a request or a job reads


class _Missing(Exception):
    pass


def _not_found(uri: str) -> str:
    """One answer for an object outside the grants and one that does not exist: neither says which."""
    return f"{uri} was not found, or is outside the buckets and prefixes this project may read (dataset grants)"


def _read_file(ctx: AppContext, project_id: str, file_id: str) -> bytes:
    with ctx.db.read() as session:
        row = session.execute(
            select(File.storage_key, File.purpose, File.bytes).where(File.id == file_id, File.project_id == project_id)
        ).first()
    if row is None or row.purpose not in VISION_PURPOSES:
        raise _Missing(f"{file_id} is not a file of this project uploaded with purpose vision")
    if row.bytes > GEMINI_LIMITS.image_bytes:
        raise ImageError("image_too_large", f"{file_id} is {row.bytes} bytes, above the limit")
    try:
        return ctx.storage.read_bytes(row.storage_key)
    except BlobNotFound:
        raise _Missing(f"{file_id} has no content") from None


def _read_object(ctx: AppContext, project_id: str, uri: str, field: str) -> bytes:
    try:
        location = dataset_grants.parse(uri, field, prefix=False)
        bucket, key = dataset_grants.s3_target(ctx.settings, location)
        if dataset_grants.reaches_own_storage(ctx.settings, bucket, key, prefix=False):
            raise _Missing(f"{uri} points into Hone's own storage; upload the image and give its file id")
        dataset_grants.check_readable(ctx, project_id, location, uri, field)
    except NotFound:
        raise _Missing(_not_found(uri)) from None
    except ApiError as exc:
        raise _Missing(exc.message) from None
    storage = ctx.settings.storage
    client = shared_client(storage.s3_endpoint_url, storage.s3_max_attempts, storage.s3_timeout_s)
    try:
        body = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=0-{GEMINI_LIMITS.image_bytes}")["Body"]
        try:
            return body.read()
        finally:
            body.close()
    except ClientError as err:
        if is_missing(err):
            raise _Missing(_not_found(uri)) from None
        raise _Missing(f"{uri} cannot be read ({err.response.get('Error', {}).get('Code') or err})") from None
    except BotoCoreError as err:
        raise _Missing(f"{uri} cannot be read: {err}") from None


def copy_in(ctx: AppContext, project_id: str, file_id: str, report: DatasetReport) -> dict[str, str]:
    """Reads, checks and copies every image `report` (a valid file's) names by reference, in line order; returns
    reference -> storage key, and adds an error naming the line and field of each one missing or not an image."""
    objects: dict[str, str] = {}
    for n, (ref, (line, field)) in enumerate(sorted(report.image_refs.items(), key=lambda item: item[1])):
        try:
            if ref.startswith("file-"):
                data = _read_file(ctx, project_id, ref)
            else:
                data = _read_object(ctx, project_id, ref, field)
            check_bytes(data, None, GEMINI_LIMITS if field.startswith("contents") else OPENAI_LIMITS)
        except _Missing as exc:
            report.add_error(LineError(line, field, "image_not_found", str(exc)))
            continue
        except ImageError as exc:
            report.add_error(LineError(line, field, exc.code, f"{ref}: {exc}"))
            continue
        key = f"{IMAGES_PREFIX}{file_id}/{n}"
        ctx.storage.put_bytes(key, data)
        objects[ref] = key
    return objects


def inlined_lines(ctx: AppContext, storage_key: str, media: dict[str, Any] | None) -> Iterator[bytes]:
    """A fine-tune file's lines with its referenced images as data URLs (as the trainer reads them)."""
    objects = (media or {}).get("objects") or {}
    return inline_lines(dataset_lines(ctx.storage.iter_chunks(storage_key)), objects, ctx.storage.read_bytes)
