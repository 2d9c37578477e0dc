"""Public object ids in OpenAI's shapes (`file-…`, `ftjob-…`, `ftckpt_…`)."""

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def random_token(length: int = 24) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_id(prefix: str, length: int = 24) -> str:
    return f"{prefix}{random_token(length)}"


def new_api_key() -> str:
    return f"sk-hone-{secrets.token_urlsafe(32)}"
