"""The checks of image parts in dataset lines: OpenAI's `image_url` content parts and Gemini's `inlineData` /
`fileData` parts. Each image must decode (hone_kernel.images), in a format and size its API allows, in a user
turn, at most the API's count per example.

Whether the job's base model reads images is the job's question, not the file's: a file with images is valid, and
the validator reports how many it holds and where the first is, so a job on a text-only model is refused naming
that line and field (service/job_creation.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from hone_kernel.images import (
    GEMINI_LIMITS,
    OPENAI_LIMITS,
    ImageError,
    Limits,
    check_bytes,
    data_url,
    gemini_data_url,
    image_source,
    parse_data_url,
)

if TYPE_CHECKING:
    from hone_kernel.dataset_checks import _Issues

IMAGE_URL_KEYS = {"url", "detail"}
# OpenAI's `detail` picks a resolution for its models; a Hone vision model sees every image at its processor's one
# resolution, so only "auto" (what that means) is taken, and "low"/"high" are refused rather than ignored.
DETAILS = ("auto",)


def _count(issues: _Issues, path: str, limits: Limits) -> None:
    issues.images += 1
    if issues.first_image is None:
        issues.first_image = path
    if issues.images == limits.images_per_example + 1:
        issues.add(
            path, "too_many_images", f"an example may hold at most {limits.images_per_example} images; this is one more"
        )


def check_image_url_part(part: dict, where: str, role: str, issues: _Issues) -> None:
    """An OpenAI `{"type": "image_url", "image_url": {"url": ..., "detail": ...}}` part."""
    spec = part.get("image_url")
    at = f"{where}.image_url"
    if role != "user":
        issues.add(f"{where}.type", "invalid_content_part", "images are only allowed in user messages")
        return
    if not isinstance(spec, dict) or not isinstance(spec.get("url"), str):
        issues.add(at, "invalid_content_part", "image_url must be an object with a 'url' string")
        return
    for key in spec:
        if key not in IMAGE_URL_KEYS:
            issues.add(f"{at}.{key}", "unrecognized_key", f"unrecognized key '{key}' (allowed: detail, url)")
    if "detail" in spec and spec["detail"] not in DETAILS:
        issues.add(
            f"{at}.detail",
            "unsupported_value",
            f"detail {spec['detail']!r} is not supported: Hone's vision models see every image at their processor's "
            "resolution; use 'auto' or leave it out",
        )
    _check_url(spec["url"], f"{at}.url", issues, OPENAI_LIMITS)


def _check_url(url: str, path: str, issues: _Issues, limits: Limits) -> None:
    _count(issues, path, limits)
    issues.image_bytes += len(url)
    source = image_source(url)
    if source == "ref":  # checked (and copied in) by the server, which can read it: service/image_refs.py
        issues.refs.append((url, path))
        return
    if source != "data":
        issues.add(path, "unsupported_image_source", source)
        return
    try:
        declared, data = parse_data_url(url)
        check_bytes(data, declared, limits)
    except ImageError as exc:
        issues.add(path, exc.code, str(exc))


def check_gemini_media(part: dict, key: str, where: str, role: str, issues: _Issues) -> None:
    """A Gemini `inlineData` ({mimeType, data: base64}) or `fileData` ({mimeType, fileUri}) part holding an image."""
    blob: Any = part[key]
    at = f"{where}.{key}"
    if role != "user":
        issues.add(at, "invalid_content_part", "images are only allowed in user turns")
        return
    if not isinstance(blob, dict):
        issues.add(at, "invalid_type", f"{key} must be an object")
        return
    mime = blob.get("mimeType", blob.get("mime_type"))
    if key in ("fileData", "file_data"):
        uri = blob.get("fileUri", blob.get("file_uri"))
        if not isinstance(uri, str):
            _count(issues, at, GEMINI_LIMITS)
            issues.add(f"{at}.fileUri", "invalid_type", "fileUri must be a string")
            return
        _check_url(uri, f"{at}.fileUri", issues, GEMINI_LIMITS)
        return
    data = blob.get("data")
    if not isinstance(data, str):
        issues.add(f"{at}.data", "invalid_type", "inlineData needs 'data', the image's bytes in base64")
        return
    _check_url(gemini_data_url(mime, data), f"{at}.data", issues, GEMINI_LIMITS)


def inline_refs(row: dict, resolve: Callable[[str], str]) -> dict:
    """The line with each image reference (a file id or bucket URI) replaced by the data URL `resolve` gives for it:
    OpenAI image_url parts in place, Gemini fileData parts as inlineData. How the trainer and the control plane read
    a file whose images the server copied in at upload."""
    for message in row.get("messages") or []:
        for part in message.get("content") if isinstance(message.get("content"), list) else []:
            spec = part.get("image_url") if isinstance(part, dict) and part.get("type") == "image_url" else None
            if isinstance(spec, dict) and isinstance(spec.get("url"), str) and image_source(spec["url"]) == "ref":
                spec["url"] = resolve(spec["url"])
    for turn in row.get("contents") or []:
        parts: list = turn.get("parts") or [] if isinstance(turn, dict) else []
        for i, part in enumerate(parts):
            key = next((k for k in ("fileData", "file_data") if isinstance(part, dict) and k in part), None)
            if key is None:
                continue
            url = resolve(part[key].get("fileUri", part[key].get("file_uri")))
            mime, _, data = url.removeprefix("data:").partition(";base64,")
            parts[i] = {"inlineData": {"mimeType": mime, "data": data}}
    return row


def inline_lines(lines: Iterable[bytes], objects: dict[str, str], read: Callable[[str], bytes]) -> Iterator[bytes]:
    """A file's lines with the images they name by reference put back as data URLs of the copies the server checked
    at upload (`objects`: reference -> the copy's storage key, read with `read`); blank lines kept, so line numbers
    hold. The trainer (trainer.data.lines_of) and the control plane (service.image_refs.inlined_lines) read so."""
    if not objects:
        yield from lines
        return

    def resolve(ref: str) -> str:
        return data_url(read(objects[ref]))

    for line in lines:
        yield json.dumps(inline_refs(json.loads(line), resolve)).encode() if line.strip() else line
