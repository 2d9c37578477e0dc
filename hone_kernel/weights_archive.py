"""A model's weights as one tar archive ending with SHA256SUMS: what GET /v1/models/{model}/content streams
(service/model_download.py) and what POST /v1/models/import takes back (service/model_import.py). The SDK and CLI
check every download against its SHA256SUMS (`verify`) and pack a folder for an import (`pack`); the control plane
checks an import's SHA256SUMS with `parse_checksums` and `compare_checksums`. Standard library only."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import IO

CHECKSUMS = "SHA256SUMS"
_CHUNK = 1 << 20


def parse_checksums(text: str) -> dict[str, str]:
    """A SHA256SUMS file's names and digests (`sha256sum`'s format: the digest, two spaces, or a space and `*` in its
    binary mode, then the name); ValueError for a line that is not one."""
    listed: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        digest, _, rest = line.partition(" ")
        name = rest[1:] if rest[:1] in (" ", "*") else ""
        if len(digest) != 64 or any(c not in "0123456789abcdefABCDEF" for c in digest) or not name:
            raise ValueError(f"line {number} of {CHECKSUMS} is not '<sha256>  <name>'")
        listed[name] = digest.lower()
    return listed


def compare_checksums(listed: dict[str, str], found: dict[str, str]) -> None:
    """ValueError naming what differs unless `found` (each file's SHA-256) is exactly what SHA256SUMS `listed`."""
    if not listed or listed != found:
        bad = sorted(set(listed.items()) ^ set(found.items()))
        raise ValueError(f"the archive does not match its {CHECKSUMS}: {bad[:3]}")


def verify(data: bytes | io.BufferedIOBase) -> dict[str, str]:
    """The archive's files and their SHA-256, checked against its SHA256SUMS (ValueError naming what differs)."""
    stream = io.BytesIO(data) if isinstance(data, bytes) else data
    found: dict[str, str] = {}
    listed: dict[str, str] = {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            content = tar.extractfile(member)
            if content is None:
                continue
            name = member.name.split("/", 1)[-1]
            body = content.read()
            if name == CHECKSUMS:
                listed = parse_checksums(body.decode())
            else:
                found[name] = hashlib.sha256(body).hexdigest()
    compare_checksums(listed, found)
    return found


def pack(folder: Path, out: IO[bytes]) -> None:
    """Writes the files at the top of `folder` (links followed; subfolders left out) to `out` as an archive in
    the download's shape: one top folder named after `folder`, the files sorted, then SHA256SUMS."""
    top = folder.resolve().name or "model"
    sums = []
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name != CHECKSUMS):
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                for chunk in iter(lambda: fh.read(_CHUNK), b""):
                    digest.update(chunk)
                info = tarfile.TarInfo(f"{top}/{path.name}")
                info.size, info.mode, info.mtime = fh.tell(), 0o644, 0
                fh.seek(0)
                tar.addfile(info, fh)
            sums.append(f"{digest.hexdigest()}  {path.name}\n")
        listing = "".join(sums).encode()
        info = tarfile.TarInfo(f"{top}/{CHECKSUMS}")
        info.size, info.mode, info.mtime = len(listing), 0o644, 0
        tar.addfile(info, io.BytesIO(listing))
