"""Bringing an adapter trained elsewhere (Hone extension): `POST /v1/models/import` takes a PEFT LoRA adapter,
trained with peft or TRL anywhere, for one of the registered base models, and makes it a tuned model of the caller's
project that deploys, serves through the gateway and is continued by new jobs as a job's model is.

The archive is the one GET /v1/models/{model}/content streams (service/model_download.py): a tar, or a gzip, bzip2
or xz compressed one, of the adapter's folder, with an optional SHA256SUMS member. So a model taken away from one
Hone comes back into another. Everything is checked before anything is stored, each problem a 400 naming the file
and the field or tensor (`param` is `file`, `base_model`, `suffix`, `adapter_config.json:<field>` or
`adapter_model.safetensors:<tensor>`):

1. the form, here: `file`, `base_model` (a registered base model whose layers the control plane can read), `suffix`
   (as a job's); the upload is spooled to a private temporary file, at most HONE_MAX_IMPORT_BYTES as sent;
2. the archive (service/import_archive.py, `invalid_archive`): at most HONE_MAX_IMPORT_BYTES unpacked, safe members
   only (files and folders with relative names, no links), and every file as its SHA256SUMS lists it when it has one;
3. the adapter against its base model (service/import_checks.py): its files (`invalid_adapter`: adapter_config.json
   and adapter_model.safetensors at its top, no pickled weights), adapter_config.json (a plain LoRA that the serving
   fleet and the engine accept and a job would continue alike), and adapter_model.safetensors' header (a `lora_A`
   and `lora_B` of the right shape for every layer `target_modules` names, and nothing else).

Only adapter_config.json and adapter_model.safetensors are kept (other files, a download's tokenizer and Hone's
serving files included, are not: the model is served with its base model's tokenizer and chat template). They go
to `imports/{import id}/adapter/`, then `hone_import.json` (what was imported, which marks the folder for the
parity gate: service/deploy/parity.py), then the tuned_models row (origin `import`, no job). A failure on the way
deletes the folder again. An Idempotency-Key with the same form and archive answers the model made the first time."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
import time
from collections.abc import AsyncIterator
from typing import IO, Any

from python_multipart.multipart import parse_options_header
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from service import idempotency
from service.auth import ProjectPrincipal
from service.base_models import BaseModel
from service.context import AppContext
from service.db.tables import IdempotencyKey, Project, TunedModel
from service.errors import NAME_CHARS, ErrorCode, InvalidRequest, excerpt
from service.ids import new_id
from service.import_archive import KEPT, Archive, open_archive, too_large
from service.import_checks import check_adapter
from service.jobs import fine_tuned_model_name
from service.models import tuned_model_api
from service.uploads import FIELD_LIMIT, MultipartUpload

log = logging.getLogger("hone.models")

IMPORT_FILE = "hone_import.json"  # written last beside an imported adapter: what was imported, and that it was
FORM_FIELDS = ("base_model", "suffix")  # besides the `file` part
SUFFIX = re.compile(r"^[A-Za-z0-9._-]{1,64}$")  # a job's suffix (service/schemas.py)


# --- the upload: spooled to a private temporary file while the form streams in -------------------------------


class _Upload:
    def __init__(self, ctx: AppContext, boundary: bytes):
        self.ctx = ctx
        self.form = MultipartUpload(boundary, lambda _name: None)
        folder = ctx.settings.server.data_dir
        folder.mkdir(parents=True, exist_ok=True)
        self.file: IO[bytes] = tempfile.TemporaryFile(dir=folder)  # unlinked already: nothing outlives the request
        self.size = 0
        self.sha = hashlib.sha256()

    def flush(self) -> None:
        for chunk in self.form.pending:
            self.size += len(chunk)
            if self.size > self.ctx.settings.files.max_import_bytes:
                raise too_large(self.ctx)
            self.sha.update(chunk)
            self.file.write(chunk)
        self.form.pending.clear()


async def import_adapter(
    ctx: AppContext,
    principal: ProjectPrincipal,
    content_type: str | None,
    content_length: str | None,
    body: AsyncIterator[bytes],
    idempotency_key: str | None = None,
) -> dict:
    kind, options = parse_options_header(content_type or "")
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise InvalidRequest(
            "An import is multipart/form-data with 'file' (the adapter's tar), 'base_model' and 'suffix' fields.",
            param="file",
            code=ErrorCode.INVALID_CONTENT_TYPE,
        )
    limit = ctx.settings.files.max_import_bytes
    if content_length and content_length.isdigit() and int(content_length) > limit + 3 * FIELD_LIMIT:
        raise too_large(ctx)
    upload = _Upload(ctx, options[b"boundary"])
    try:
        async for chunk in body:
            upload.form.write(chunk)
            if upload.form.pending:
                await run_in_threadpool(upload.flush)
        upload.form.finish()
        await run_in_threadpool(upload.flush)
        return await run_in_threadpool(_import, ctx, principal, upload, idempotency_key)
    finally:
        upload.file.close()


# --- the form ----------------------------------------------------------------------------------------


def _form(ctx: AppContext, upload: _Upload) -> tuple[BaseModel, str | None]:
    fields = upload.form.fields
    unknown = sorted(set(fields) - set(FORM_FIELDS))
    if unknown:
        field_name = excerpt(unknown[0])
        raise InvalidRequest(
            f"Unrecognized request argument supplied: {field_name!r} (the form fields are 'file', 'base_model' and "
            "'suffix').",
            param=field_name,
            code=ErrorCode.UNKNOWN_PARAMETER,
        )
    if upload.form.filename is None:
        raise InvalidRequest(
            "Missing required parameter: 'file' (the adapter's folder as a tar).",
            param="file",
            code=ErrorCode.MISSING_REQUIRED_PARAMETER,
        )
    name = fields.get("base_model")
    if not name:
        raise InvalidRequest(
            "Missing required parameter: 'base_model'.", param="base_model", code=ErrorCode.MISSING_REQUIRED_PARAMETER
        )
    base = ctx.base_models.get(name)
    if base is None:
        raise InvalidRequest(
            f"base_model '{excerpt(name, NAME_CHARS)}' is not a base model of this server (GET /v1/models lists "
            "them); an adapter is imported for the base model it was trained on.",
            param="base_model",
            code=ErrorCode.MODEL_NOT_AVAILABLE,
        )
    suffix = fields.get("suffix") or None
    if suffix is not None and not SUFFIX.match(suffix):
        raise InvalidRequest(
            "suffix must be 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-'.",
            param="suffix",
            code=ErrorCode.INVALID_VALUE,
        )
    return base, suffix


# --- storing it --------------------------------------------------------------------------------------


def _fingerprint(base: BaseModel, suffix: str | None, archive_sha256: str) -> str:
    body = {"base_model": base.name, "suffix": suffix, "archive_sha256": archive_sha256}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _prefix(import_id: str) -> str:
    return f"imports/{import_id}/adapter/"


def _replayed(ctx: AppContext, principal: ProjectPrincipal, key: str, request_sha: str) -> dict | None:
    """The model an earlier import with this Idempotency-Key made, or None (none, expired, or deleted since)."""
    with ctx.db.write() as session:
        import_id = idempotency.replayed_object(session, principal.project_id, key, request_sha)
        if import_id is None:
            return None
        model = session.execute(
            select(TunedModel).where(
                TunedModel.project_id == principal.project_id, TunedModel.storage_prefix == _prefix(import_id)
            )
        ).scalar()
        if model is None:  # deleted since: the key makes a new one
            session.delete(session.get(IdempotencyKey, (principal.project_id, key)))
            session.flush()
            return None
        return tuned_model_api(model)


def _import(ctx: AppContext, principal: ProjectPrincipal, upload: _Upload, key: str | None) -> dict:
    base, suffix = _form(ctx, upload)
    request_sha = _fingerprint(base, suffix, upload.sha.hexdigest())
    if key is not None and (replayed := _replayed(ctx, principal, key, request_sha)) is not None:
        return replayed
    archive = open_archive(ctx, upload.file)
    config = check_adapter(ctx, archive, base)
    try:
        return _store(ctx, principal, archive, base, suffix, config, key, request_sha)
    except IntegrityError:
        if key is None:
            raise
        # A concurrent import with the same key won (its row and key are in): answer with its model.
        replayed = _replayed(ctx, principal, key, request_sha)
        if replayed is None:
            raise
        return replayed


def _store(
    ctx: AppContext,
    principal: ProjectPrincipal,
    archive: Archive,
    base: BaseModel,
    suffix: str | None,
    config: dict[str, Any],
    key: str | None,
    request_sha: str,
) -> dict:
    import_id = new_id("ftimport-")
    prefix, now = _prefix(import_id), int(time.time())
    try:
        for name in KEPT:
            writer = ctx.storage.writer(prefix + name)
            try:
                for chunk in archive.chunks(name):
                    writer.write(chunk)
                writer.commit()
            except BaseException:
                writer.abort()
                raise
        marker = {
            "origin": "import",
            "base_model": base.name,
            "base_model_name_or_path": config.get("base_model_name_or_path"),  # as the adapter said; not used
            "imported_at": now,
            "sha256": {name: archive.sha256[name] for name in KEPT},
        }
        ctx.storage.put_bytes(prefix + IMPORT_FILE, json.dumps(marker, indent=2).encode())
        with ctx.db.write() as session:
            slug = session.execute(select(Project.slug).where(Project.id == principal.project_id)).scalar_one()
            name = fine_tuned_model_name(base.name, slug, suffix, import_id)
            row = TunedModel(
                id=name,
                project_id=principal.project_id,
                job_id=None,
                base_model=base.name,
                created_at=now,
                storage_prefix=prefix,
                origin="import",
            )
            session.add(row)
            if key is not None:
                idempotency.remember(session, principal.project_id, key, request_sha, import_id)
            session.flush()
            answer = tuned_model_api(row)
    except BaseException:
        try:
            ctx.storage.delete_prefix(prefix)
        except Exception:
            log.exception("an import that failed left objects behind", extra={"prefix": prefix})
        raise
    return answer
