"""A downloaded model's archive (GET /v1/models/{model}/content: service/model_download.py) checked against the
SHA256SUMS it ends with; the SDK and CLI run this on every download. Standard library only."""

from __future__ import annotations

import hashlib
import io
import tarfile

CHECKSUMS = "SHA256SUMS"


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
                for line in body.decode().splitlines():
                    digest, _, listed_name = line.partition("  ")
                    listed[listed_name] = digest
            else:
                found[name] = hashlib.sha256(body).hexdigest()
    if not listed or listed != found:
        bad = sorted(set(listed.items()) ^ set(found.items()))
        raise ValueError(f"the archive does not match its {CHECKSUMS}: {bad[:3]}")
    return found
