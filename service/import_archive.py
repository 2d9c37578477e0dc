"""Reading and checking an imported adapter's archive (POST /v1/models/import, service/model_import.py): the tar,
or gzip, bzip2 or xz compressed tar, that GET /v1/models/{model}/content gives. Every member is checked and every
file hashed before anything is read for what it holds; a problem is a 400 `invalid_archive` on `file` (or a 413
past HONE_MAX_IMPORT_BYTES):

- at most HONE_MAX_IMPORT_BYTES unpacked (the upload checks the bytes as sent) and at most MAX_MEMBERS members;
- each member a file or folder with a relative name without `..`: no links, devices, absolute paths or names given
  twice (nothing here is ever written by a member's name, but whoever unpacks the archive would write outside it);
- every file as SHA256SUMS lists it, when the archive has one (hone_kernel/weights_archive.py parses it).

The files are named within the adapter's folder: whether the archive puts them under one top folder (`tar -cf
a.tar FOLDER`, a download) or at its top (`tar -C FOLDER -cf a.tar .`)."""

from __future__ import annotations

import hashlib
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

from hone_kernel.weights_archive import CHECKSUMS, compare_checksums, parse_checksums
from service.context import AppContext
from service.errors import NAME_CHARS, ErrorCode, InvalidRequest, PayloadTooLarge, excerpt

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
KEPT = (CONFIG, WEIGHTS)  # the adapter's two files: hashed even without SHA256SUMS, and the only ones stored
MAX_MEMBERS = 1000
_CHUNK = 1 << 20


def archive_error(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="file", code=ErrorCode.INVALID_ARCHIVE)


def too_large(ctx: AppContext) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The adapter's archive is too large: the limit is {ctx.settings.files.max_import_bytes} bytes, as sent "
        "and as unpacked (HONE_MAX_IMPORT_BYTES).",
        param="file",
        code=ErrorCode.FILE_TOO_LARGE,
    )


@dataclass
class Archive:
    tar: tarfile.TarFile
    files: dict[str, tarfile.TarInfo] = field(default_factory=dict)  # by name under the archive's top folder
    sha256: dict[str, str] = field(default_factory=dict)  # every file's with SHA256SUMS, else the kept ones

    def read(self, name: str) -> bytes:
        content = self.tar.extractfile(self.files[name])
        assert content is not None  # a regular file
        return content.read()

    def chunks(self, name: str) -> Iterator[bytes]:
        content = self.tar.extractfile(self.files[name])
        assert content is not None  # a regular file
        while chunk := content.read(_CHUNK):
            yield chunk


def _member_name(raw: str) -> str:
    """The member's name without `./` steps; an unsafe one is refused (whoever unpacks it would write outside
    the folder), though nothing here is ever written by a member's name."""
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw) or "\\" in raw or ".." in parts:
        raise archive_error(
            f"The archive's member '{excerpt(raw, NAME_CHARS)}' has an absolute name or one with '..': an archive "
            "of an adapter's folder names its files within it."
        )
    return "/".join(parts)


def open_archive(ctx: AppContext, file: IO[bytes]) -> Archive:
    """Every member checked and every file hashed, before anything is read for what it holds."""
    limit = ctx.settings.files.max_import_bytes
    file.seek(0)
    try:
        tar = tarfile.open(fileobj=file, mode="r:*")  # the upload's file is closed when the request ends
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise archive_error(
            f"The file is not a tar archive (or a gzip, bzip2 or xz compressed one): {excerpt(exc, 200)}. Send the "
            "adapter's folder as GET /v1/models/{model}/content gives it, or `tar -cf adapter.tar FOLDER`."
        ) from None
    names: dict[str, tarfile.TarInfo] = {}
    unpacked = members = 0
    try:
        while (member := tar.next()) is not None:
            members += 1
            if members > MAX_MEMBERS:
                raise archive_error(f"The archive has more than {MAX_MEMBERS} members; an adapter has a few files.")
            name = _member_name(member.name)
            if member.isdir() or not name:
                continue
            if not member.isfile() or member.issparse():
                what = "a link" if member.issym() or member.islnk() else "not a plain file"
                raise archive_error(
                    f"The archive's member '{excerpt(member.name, NAME_CHARS)}' is {what}: an imported archive "
                    "holds files and folders only."
                )
            if name in names:
                raise archive_error(f"The archive holds '{excerpt(name, NAME_CHARS)}' twice; which one is meant?")
            unpacked += member.size
            if unpacked > limit:
                raise too_large(ctx)
            names[name] = member
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise archive_error(f"The archive cannot be read to its end: {excerpt(exc, 200)}.") from None
    archive = Archive(tar, _under_top(names))
    checked = CHECKSUMS in archive.files
    try:
        for name in archive.files if checked else [n for n in KEPT if n in archive.files]:
            digest = hashlib.sha256()
            for chunk in archive.chunks(name):
                digest.update(chunk)
            archive.sha256[name] = digest.hexdigest()
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise archive_error(f"The archive cannot be read to its end: {excerpt(exc, 200)}.") from None
    if checked:
        try:
            listed = parse_checksums(archive.read(CHECKSUMS).decode("utf-8", "replace"))
            compare_checksums(listed, {n: d for n, d in archive.sha256.items() if n != CHECKSUMS})
        except ValueError as exc:
            raise archive_error(
                f"{exc}. A file changed after SHA256SUMS was written, or the upload was damaged; nothing was stored."
            ) from None
    return archive


def _under_top(names: dict[str, tarfile.TarInfo]) -> dict[str, tarfile.TarInfo]:
    """The files by their names in the adapter's folder: `tar -cf a.tar FOLDER` and a download put every file in
    one top folder, `tar -C FOLDER -cf a.tar .` puts them at the top."""
    tops = {name.split("/", 1)[0] for name in names}
    if len(tops) == 1 and all("/" in name for name in names):
        return {name.split("/", 1)[1]: member for name, member in names.items()}
    return names
