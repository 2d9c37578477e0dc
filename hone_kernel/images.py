"""Images in training data and requests: where they may come from, which formats and sizes are taken, and the
decoding both training and serving use, so a model sees at serving time exactly the pixels it was trained on.

The checks run on the standard library (a data URL's bytes, the format told by its magic bytes, the size read
from its header), so `hone files validate` can run them offline; `decode` (Pillow) opens an image as both the
trainer and the engine feed it to a model's processor, and the server's upload validation calls it too.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
from dataclasses import dataclass
from typing import Any

# By their magic bytes. GIF is taken as its first frame (OpenAI's vision input does the same).
FORMATS = ("image/jpeg", "image/png", "image/webp", "image/gif")


@dataclass(frozen=True)
class Limits:
    """A dataset format's own limits, as its API documents them."""

    images_per_example: int
    image_bytes: int


OPENAI_LIMITS = Limits(images_per_example=10, image_bytes=10 << 20)  # OpenAI's vision fine-tuning guide
GEMINI_LIMITS = Limits(images_per_example=30, image_bytes=20 << 20)  # Vertex's image tuning page
MAX_PIXELS = 8192 * 8192  # larger is a decompression bomb, not a photo

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,", re.ASCII)


class ImageError(ValueError):
    """An image Hone will not use; `code` is the dataset error code, the message says why."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ImageInfo:
    mime: str
    width: int
    height: int
    size: int  # bytes


def parse_data_url(url: str) -> tuple[str | None, bytes]:
    """(declared MIME type, the bytes) of a base64 data URL."""
    match = _DATA_URL.match(url)
    if match is None or not match.group("b64"):
        raise ImageError("invalid_image_url", "must be a base64 data URL (data:image/png;base64,...)")
    try:
        data = base64.b64decode(url[match.end() :], validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("invalid_image", "the data URL's base64 payload is not valid base64") from None
    return match.group("mime"), data


def gemini_data_url(mime: str | None, data: str) -> str:
    """A Gemini inlineData blob as a data URL. Gemini takes URL-safe base64 too (google-genai sends it), which data
    URLs do not: it is turned into the standard alphabet, padded."""
    standard = data.replace("-", "+").replace("_", "/")
    return f"data:{mime or ''};base64,{standard + '=' * (-len(standard) % 4)}"


_FILE_ID = re.compile(r"^file-[A-Za-z0-9]{1,64}$")
REF_SCHEMES = ("s3", "gs")


def image_source(url: str) -> str:
    """What kind of reference an image URL is: 'data' (a base64 data URL), 'ref' (in training data: the id of a
    file uploaded with purpose "vision", or an s3:// / gs:// object under the project's dataset grants, which the
    server copies in at upload: service/image_refs.py), or the reason it is refused."""
    if url.startswith("data:"):
        return "data"
    if _FILE_ID.match(url) or url.partition("://")[0].lower() in REF_SCHEMES and "://" in url:
        return "ref"
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("http", "https"):
        return (
            "Hone does not fetch images from the web (its trainers and engines may have no internet access); "
            "embed the image as a base64 data URL, upload it (purpose vision) and give its file id, or name an "
            "s3:// or gs:// object the project may read"
        )
    return (
        f"unsupported image reference {url[:40]!r}; give a base64 data URL, the id of a file uploaded with purpose "
        "vision, or an s3:// or gs:// object the project may read"
    )


def request_image_problem(url: str) -> str | None:
    """Why a request's image is refused (requests carry their images: a data URL), or None."""
    source = image_source(url)
    if source == "data":
        return None
    if source == "ref":
        return "file ids and bucket URIs name images in training data; in a request, embed the image as a data URL"
    return source


def sniff(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 9 < len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            at += 2
            continue
        length = struct.unpack(">H", data[at + 2 : at + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            height, width = struct.unpack(">HH", data[at + 5 : at + 9])
            return width, height
        at += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width = 1 + int.from_bytes(data[24:27], "little")
        return width, 1 + int.from_bytes(data[27:30], "little")
    if chunk == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def dimensions(data: bytes, mime: str) -> tuple[int, int] | None:
    """(width, height) read from the image's header, without decoding it."""
    if mime == "image/png" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if mime == "image/gif" and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if mime == "image/jpeg":
        return _jpeg_size(data)
    if mime == "image/webp":
        return _webp_size(data)
    return None


def check_bytes(data: bytes, declared: str | None, limits: Limits) -> ImageInfo:
    """The image's format and size, or ImageError: empty, too large, not a format Hone takes, a declared type
    that is not what the bytes are, a header that does not parse, or (where Pillow is installed) bytes that
    do not decode."""
    if not data:
        raise ImageError("invalid_image", "the image is empty")
    if len(data) > limits.image_bytes:
        raise ImageError(
            "image_too_large", f"the image is {len(data)} bytes, above the {limits.image_bytes >> 20} MB allowed"
        )
    mime = sniff(data)
    if mime is None:
        raise ImageError("invalid_image_format", "the image is not JPEG, PNG, WEBP or GIF")
    if declared is not None and declared.lower() not in (mime, "image/jpg" if mime == "image/jpeg" else mime):
        raise ImageError("invalid_image_format", f"the image is declared {declared} but its bytes are {mime}")
    size = dimensions(data, mime)
    if size is None or min(size) < 1:
        raise ImageError("invalid_image", f"the {mime} image's header does not parse")
    if size[0] * size[1] > MAX_PIXELS:
        raise ImageError("image_too_large", f"the image is {size[0]}x{size[1]} pixels, above {MAX_PIXELS} allowed")
    if _pillow() is not None:
        decode(data)
    return ImageInfo(mime, size[0], size[1], len(data))


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError:  # the offline validator without Pillow: headers are checked, not pixels
        return None
    return Image


def decode(data: bytes) -> Any:
    """The image as an RGB PIL image (a GIF's first frame; transparency over white), or ImageError."""
    image_mod = _pillow()
    if image_mod is None:
        raise RuntimeError("decoding images needs Pillow")
    try:
        with image_mod.open(io.BytesIO(data)) as image:
            image.seek(0)
            image.load()
            if image.mode in ("RGBA", "LA", "P", "PA"):
                rgba = image.convert("RGBA")
                background = image_mod.new("RGBA", rgba.size, (255, 255, 255, 255))
                return image_mod.alpha_composite(background, rgba).convert("RGB")
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, image_mod.DecompressionBombError) as exc:
        raise ImageError("invalid_image", f"the image does not decode ({exc})") from None


def data_url(data: bytes, mime: str | None = None) -> str:
    return f"data:{mime or sniff(data) or 'application/octet-stream'};base64,{base64.b64encode(data).decode()}"
