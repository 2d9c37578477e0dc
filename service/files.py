"""Files: streamed multipart upload into blob storage, with dataset validation on the way in.

An upload becomes visible only when it is complete: the blob is committed and the row
inserted at the end, and any failure (size limit, bad form, disconnect) aborts the blob
and leaves no row. A complete fine-tune file ends `processed`, or `error` with its
line-numbered problems in `status_details`; jobs refuse files in `error`.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import AsyncIterator, Iterable, Iterator

from python_multipart.multipart import parse_options_header
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from service import image_refs
from service.auth import ProjectPrincipal
from service.context import AppContext
from service.datasets import DatasetReport, DatasetValidator, filename_problem
from service.db.tables import File, Job
from service.errors import ErrorCode, InvalidRequest, NotFound, PayloadTooLarge, excerpt
from service.ids import new_id
from service.job_states import ACTIVE
from service.pagination import list_envelope, paginate
from service.storage import BlobWriter
from service.uploads import FIELD_LIMIT, MultipartUpload

UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
MIN_EXPIRY_S, MAX_EXPIRY_S = 3600, 2592000


def file_api(f: File) -> dict:
    body: dict = {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": f.status,
    }
    if f.expires_at is not None:
        body["expires_at"] = f.expires_at
    if f.status_details is not None:
        body["status_details"] = f.status_details
    if f.purpose == "fine-tune":  # Hone extension: what validation found, as data
        body["dataset"] = {"format": f.dataset_format, "examples": f.example_count}
        if f.dataset_media:
            body["dataset"] |= {k: f.dataset_media[k] for k in ("images", "image_examples")}
        if f.validation_errors:
            body["dataset"] |= {"errors": f.validation_errors["errors"], "total_errors": f.validation_errors["total"]}
    return body


class _Upload:
    """State of one upload while it streams in: the multipart parse, and the file's bytes on their way to storage."""

    def __init__(self, ctx: AppContext, file_id: str, boundary: bytes):
        self.ctx = ctx
        self.key = f"files/{file_id}"
        self.size = 0
        self.sha = hashlib.sha256()
        self.validator = _validator(ctx)
        self.writer: BlobWriter | None = None
        self.form = MultipartUpload(boundary, self._file_named)

    @property
    def fields(self) -> dict[str, str]:
        return self.form.fields

    @property
    def filename(self) -> str | None:
        return self.form.filename

    def _file_named(self, filename: str) -> None:
        if self._fine_tune:
            _check_fine_tune_name(filename)  # fail before streaming the body when we can

    @property
    def _fine_tune(self) -> bool:
        # Until the purpose field arrives the bytes are validated in case it is "fine-tune".
        return self.fields.get("purpose", "fine-tune") == "fine-tune"

    def flush(self) -> None:
        """Runs in a worker thread: hashes, validates and stores the file bytes received so far."""
        if self.writer is None:
            self.writer = self.ctx.storage.writer(self.key)
        for chunk in self.form.pending:
            self.size += len(chunk)
            if self.size > self.ctx.settings.files.max_file_bytes:
                raise _too_large(self.ctx)
            self.sha.update(chunk)
            if self._fine_tune:
                self.validator.feed(chunk)
            self.writer.write(chunk)
        self.form.pending.clear()

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()


def _check_fine_tune_name(filename: str) -> None:
    problem = filename_problem(filename)  # the rule `hone files validate` applies before uploading
    if problem:
        raise InvalidRequest(problem, param="file", code=ErrorCode.INVALID_FILE_FORMAT)


def _too_large(ctx: AppContext, param: str = "file") -> PayloadTooLarge:
    return PayloadTooLarge(
        f"File is too large: the limit is {ctx.settings.files.max_file_bytes} bytes.",
        param=param,
        code=ErrorCode.FILE_TOO_LARGE,
    )


def _validator(ctx: AppContext) -> DatasetValidator:
    return DatasetValidator(
        max_line_bytes=ctx.settings.files.max_line_bytes, max_errors=ctx.settings.files.max_reported_errors
    )


def _validation_errors(report: DatasetReport) -> dict:
    return {"errors": [e.as_dict() for e in report.errors], "total": report.total_errors}


def _insert_stored(ctx: AppContext, row: File) -> None:
    """Inserts the row of a blob just committed; the blob goes again if the insert fails."""
    try:
        with ctx.db.write() as session:
            session.add(row)
    except BaseException:
        _delete_blobs(ctx, row)
        raise


def _expires_at(fields: dict[str, str], now: int) -> int | None:
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest(
            "expires_after[anchor] must be 'created_at'.", param="expires_after.anchor", code=ErrorCode.INVALID_VALUE
        )
    try:
        value = int(seconds or "")
    except ValueError:
        value = -1
    if not MIN_EXPIRY_S <= value <= MAX_EXPIRY_S:
        raise InvalidRequest(
            f"expires_after[seconds] must be an integer from {MIN_EXPIRY_S} to {MAX_EXPIRY_S}.",
            param="expires_after.seconds",
            code=ErrorCode.INVALID_VALUE,
        )
    return now + value


async def create_file(
    ctx: AppContext,
    principal: ProjectPrincipal,
    content_type: str | None,
    content_length: str | None,
    body: AsyncIterator[bytes],
) -> dict:
    kind, options = parse_options_header(content_type or "")
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise InvalidRequest(
            "Uploads must be multipart/form-data with 'file' and 'purpose' fields.",
            param="file",
            code=ErrorCode.INVALID_CONTENT_TYPE,
        )
    if (
        content_length
        and content_length.isdigit()
        and int(content_length) > ctx.settings.files.max_file_bytes + FIELD_LIMIT
    ):
        raise _too_large(ctx)
    file_id = new_id("file-")
    upload = _Upload(ctx, file_id, options[b"boundary"])
    try:
        async for chunk in body:
            upload.form.write(chunk)
            if upload.form.pending:
                await run_in_threadpool(upload.flush)
        upload.form.finish()
        return await run_in_threadpool(_finish_upload, ctx, principal, file_id, upload)
    except BaseException:
        await run_in_threadpool(upload.abort)
        raise


UPLOAD_FIELDS = ("purpose", "expires_after[anchor]", "expires_after[seconds]")  # besides the `file` part


def _finish_upload(ctx: AppContext, principal: ProjectPrincipal, file_id: str, upload: _Upload) -> dict:
    unknown = sorted(set(upload.fields) - set(UPLOAD_FIELDS))
    if unknown:  # refused, never stored and ignored
        name = excerpt(unknown[0])
        raise InvalidRequest(
            f"Unrecognized request argument supplied: {name!r} (the form fields are 'file', "
            f"{', '.join(repr(f) for f in UPLOAD_FIELDS)}).",
            param=name,
            code=ErrorCode.UNKNOWN_PARAMETER,
        )
    purpose = upload.fields.get("purpose")
    if purpose is None:
        raise InvalidRequest(
            "Missing required parameter: 'purpose'.", param="purpose", code=ErrorCode.MISSING_REQUIRED_PARAMETER
        )
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(
            f"Invalid value for 'purpose': '{excerpt(purpose)}'; expected one of {', '.join(UPLOAD_PURPOSES)}.",
            param="purpose",
            code=ErrorCode.INVALID_VALUE,
        )
    if upload.filename is None:
        raise InvalidRequest(
            "Missing required parameter: 'file'.", param="file", code=ErrorCode.MISSING_REQUIRED_PARAMETER
        )
    upload.flush()  # also opens the writer for an empty file
    now = int(time.time())
    expires_at = _expires_at(upload.fields, now)
    row = File(
        id=file_id,
        project_id=principal.project_id,
        filename=upload.filename,
        purpose=purpose,
        bytes=upload.size,
        created_at=now,
        expires_at=expires_at,
        status="processed",
        storage_key=upload.key,
        sha256=upload.sha.hexdigest(),
    )
    if purpose == "fine-tune":
        _check_fine_tune_name(upload.filename)
        report = upload.validator.finish()
        row.dataset_format = report.format.value if report.format else None
        row.example_count = report.examples
        row.dataset_media = _media(ctx, principal.project_id, file_id, report)
        if not report.ok:
            row.status, row.status_details = "error", f"Invalid file format: {report.summary()}"
            row.validation_errors = _validation_errors(report)
    assert upload.writer is not None  # flush() opened it
    upload.writer.commit()
    _insert_stored(ctx, row)
    return file_api(row)


def _media(ctx: AppContext, project_id: str, file_id: str, report: DatasetReport) -> dict | None:
    """The file's media summary; images it names by reference are read, checked and copied in first (an error
    naming the line and field for each that cannot be: service/image_refs.py)."""
    media = report.media()
    if media is not None and report.image_refs and report.ok:
        objects = image_refs.copy_in(ctx, project_id, file_id, report)
        if report.ok:
            media["objects"] = objects
        else:  # a file in error trains nothing: its copies go
            ctx.storage.delete_prefix(f"{image_refs.IMAGES_PREFIX}{file_id}/")
    return media


def import_fine_tune_file(
    ctx: AppContext, principal: ProjectPrincipal, filename: str, chunks: Iterable[bytes], *, param: str, source: str
) -> File:
    """A fine-tune file from bytes read elsewhere (a dataset object in a bucket), checked as uploads are.
    Unlike an upload, an invalid dataset is refused whole: nothing is stored, and the error lists the bad
    lines and fields (as a job refusing a file in `error` does)."""
    file_id = new_id("file-")
    key, validator, sha, size = f"files/{file_id}", _validator(ctx), hashlib.sha256(), 0
    writer = ctx.storage.writer(key)
    try:
        for chunk in chunks:
            size += len(chunk)
            if size > ctx.settings.files.max_file_bytes:
                raise _too_large(ctx, param)
            sha.update(chunk)
            validator.feed(chunk)
            writer.write(chunk)
        report = validator.finish()
        media = _media(ctx, principal.project_id, file_id, report)
        if not report.ok:
            first = report.errors[0]
            raise InvalidRequest(
                f"invalid {param}: {source} is not a valid dataset: {report.summary()}",
                param=param,
                code=ErrorCode.INVALID_DATASET,
                extra={
                    "line": first.line,
                    "field": first.field,
                    "total_errors": report.total_errors,
                    "errors": [e.as_dict() for e in report.errors],
                },
            )
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    row = File(
        id=file_id,
        project_id=principal.project_id,
        filename=filename,
        purpose="fine-tune",
        bytes=size,
        created_at=int(time.time()),
        status="processed",
        storage_key=key,
        sha256=sha.hexdigest(),
        dataset_format=report.format.value if report.format else None,
        example_count=report.examples,
        dataset_media=media,
    )
    _insert_stored(ctx, row)
    return row


def get_file_row(session, principal: ProjectPrincipal, file_id: str) -> File:
    row = session.execute(select(File).where(File.id == file_id, File.project_id == principal.project_id)).scalar()
    if row is None:
        raise NotFound(f"No such File object: {excerpt(file_id)}", param="id", code=ErrorCode.NOT_FOUND)
    return row


def get_file(ctx: AppContext, principal: ProjectPrincipal, file_id: str) -> dict:
    with ctx.db.read() as session:
        return file_api(get_file_row(session, principal, file_id))


def list_files(
    ctx: AppContext, principal: ProjectPrincipal, *, purpose: str | None, order: str, after: str | None, limit: int
) -> dict:
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be 'asc' or 'desc'.", param="order", code=ErrorCode.INVALID_VALUE)
    with ctx.db.read() as session:
        stmt = select(File).where(File.project_id == principal.project_id)
        if purpose:
            stmt = stmt.where(File.purpose == purpose)
        rows, has_more = paginate(session, stmt, File, after=after, limit=limit, newest_first=order == "desc")
        return list_envelope([file_api(f) for f in rows], has_more, with_ids=True, empty_id="")


def file_content(ctx: AppContext, principal: ProjectPrincipal, file_id: str) -> tuple[File, Iterator[bytes]]:
    with ctx.db.read() as session:
        row = get_file_row(session, principal, file_id)
    chunks = ctx.storage.iter_chunks(row.storage_key)
    # The object is opened here, before any response starts: a store that fails answers 503, not a cut stream.
    first = next(chunks, b"")
    return row, itertools.chain((first,), chunks)


def _active_jobs_using(file_id, project_id):
    """Unfinished jobs that still need the file; works on values or, correlated, on File's columns."""
    return select(Job.id, Job.status).where(
        Job.project_id == project_id,
        Job.status.in_([s.value for s in ACTIVE]),
        (Job.training_file == file_id) | (Job.validation_file == file_id),
    )


def _active_user(session, row: File):
    return session.execute(_active_jobs_using(row.id, row.project_id)).first()


def expire_files(ctx: AppContext, batch: int = 100) -> int:
    """Deletes files past their `expires_at`, except those an unfinished job still reads."""
    now = int(time.time())
    with ctx.db.read() as session:
        # Files still in use are left out here, so they cannot fill every batch and starve the rest.
        due = (
            session.execute(
                select(File.id)
                .where(
                    File.expires_at.is_not(None),
                    File.expires_at <= now,
                    ~_active_jobs_using(File.id, File.project_id).exists(),
                )
                .order_by(File.expires_at)
                .limit(batch)
            )
            .scalars()
            .all()
        )
    expired = 0
    for file_id in due:
        with ctx.db.write() as session:
            row = session.execute(select(File).where(File.id == file_id)).scalar()
            if row is None or _active_user(session, row) is not None:  # a job may have claimed it since
                continue
            session.delete(row)
        _delete_blobs(ctx, row)
        expired += 1
    return expired


def delete_file(ctx: AppContext, principal: ProjectPrincipal, file_id: str) -> dict:
    with ctx.db.write() as session:
        row = get_file_row(session, principal, file_id)
        users = _active_user(session, row)
        if users is not None:
            raise InvalidRequest(
                f"File {file_id} is used by job {users.id}, which is {users.status}; "
                "cancel the job or wait for it to finish first.",
                param="file_id",
                code=ErrorCode.FILE_IN_USE,
            )
        session.delete(row)
    _delete_blobs(ctx, row)
    return {"id": file_id, "object": "file", "deleted": True}


def _delete_blobs(ctx: AppContext, row: File) -> None:
    """The file's blob, and the copies of the images it names by reference (service/image_refs.py)."""
    ctx.storage.delete(row.storage_key)
    if (row.dataset_media or {}).get("objects"):
        ctx.storage.delete_prefix(f"{image_refs.IMAGES_PREFIX}{row.id}/")
