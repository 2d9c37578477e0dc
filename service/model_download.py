"""Taking a tuned model away (Hone extension): its weights as one tar stream, a PEFT adapter or full weights with
the tokenizer (or processor) and Hone's serving files, for a tuned model or any of its checkpoints.

The archive is streamed from storage file by file, never held whole; its last member, `SHA256SUMS`, lists each
file's SHA-256 (the `sha256sum` format, computed as the bytes went out), so the receiver checks what arrived
(the SDK's and CLI's `download` do). A model of another project reads as missing, as everywhere."""

from __future__ import annotations

import hashlib
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

from hone_kernel.weights_archive import CHECKSUMS
from service.auth import ProjectPrincipal
from service.context import AppContext
from service.endpoints import resolve_model
from service.errors import ErrorCode, InvalidRequest
from service.storage import BlobStorage

_BLOCK = 512


@dataclass(frozen=True)
class Archive:
    filename: str  # what the download is saved as
    chunks: Iterator[bytes]


def _member(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o644, 0  # fixed: the same weights make the same archive
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % _BLOCK)


def _stream(storage: BlobStorage, prefix: str, keys: list[str], top: str) -> Iterator[bytes]:
    sums = []
    for key in keys:
        name = key[len(prefix) :]
        size, digest, sent = storage.size(key), hashlib.sha256(), 0
        yield _member(f"{top}/{name}", size)
        for chunk in storage.iter_chunks(key):
            digest.update(chunk)
            sent += len(chunk)
            yield chunk
        if sent != size:  # the header promised `size` bytes: a blob that changed meanwhile breaks the archive
            raise RuntimeError(f"{key} changed while it was being read")
        yield _padding(size)
        sums.append(f"{digest.hexdigest()}  {name}\n")
    listing = "".join(sums).encode()
    yield _member(f"{top}/{CHECKSUMS}", len(listing)) + listing + _padding(len(listing))
    yield b"\0" * (2 * _BLOCK)  # end of archive


def archive(ctx: AppContext, principal: ProjectPrincipal, model: str) -> Archive:
    """The weights of a tuned model or checkpoint of the caller's project (404 otherwise, 400 for a base model).
    A model another project shared with the caller is not among them: sharing lends its use, not its weights."""
    with ctx.db.read() as session:
        served = resolve_model(ctx, session, principal.project_id, model, shared=False)
    if served.kind == "base" or served.weights_prefix is None:
        raise InvalidRequest(
            f"'{model}' is a base model: only tuned models and their checkpoints can be downloaded.",
            param="model",
            code=ErrorCode.MODEL_NOT_AVAILABLE,
        )
    prefix = served.weights_prefix
    keys = sorted(ctx.storage.list(prefix))
    if not keys:
        raise InvalidRequest(
            f"The weights of model {model} are no longer in storage.", param="model", code=ErrorCode.MODEL_NOT_AVAILABLE
        )
    top = re.sub(r"[^A-Za-z0-9._-]+", "-", served.name).strip("-") or "model"
    return Archive(f"{top}.tar", _stream(ctx.storage, prefix, keys, top))
