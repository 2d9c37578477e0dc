"""Public object ids in OpenAI's shapes (`file-…`, `ftjob-…`, `ftckpt_…`)."""

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


_UNBIASED = 256 - 256 % len(_ALPHABET)  # bytes below this map evenly onto the alphabet


def random_token(length: int = 24) -> str:
    # One urandom read for the whole token, not one per character (secrets.choice): a created job makes three
    # ids, and the per-character reads were ~0.1 ms of its server CPU. Rejecting bytes >= 248 keeps every
    # character equally likely.
    chars: list[str] = []
    while len(chars) < length:
        chars += [_ALPHABET[b % len(_ALPHABET)] for b in secrets.token_bytes(length + 8) if b < _UNBIASED]
    return "".join(chars[:length])


def new_id(prefix: str, length: int = 24) -> str:
    return f"{prefix}{random_token(length)}"


def new_api_key() -> str:
    return f"sk-hone-{secrets.token_urlsafe(32)}"
