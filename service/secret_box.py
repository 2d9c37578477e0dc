"""Secrets kept encrypted at rest (a project's external model keys): Fernet (AES-128-CBC with HMAC-SHA256, from
`cryptography`) under HONE_SECRET_KEY, or a key made once into the data dir (mode 0600) when it is unset. Replicas
that share a database must share the key: set HONE_SECRET_KEY for them (`python -c "from cryptography.fernet
import Fernet; print(Fernet.generate_key().decode())"`)."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken


class SecretBox:
    def __init__(self, key: bytes):
        self._fernet = Fernet(key)

    def seal(self, secret: str) -> str:
        return self._fernet.encrypt(secret.encode()).decode("ascii")

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode("ascii")).decode()
        except InvalidToken:
            raise ValueError(
                "a stored secret cannot be opened: HONE_SECRET_KEY is not the key it was sealed with"
            ) from None


def open_box(secret_key: str | None, data_dir: Path) -> SecretBox:
    if secret_key:
        return SecretBox(secret_key.encode())
    path = data_dir / "secret_key"
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another worker made it meanwhile
            pass
        else:
            with os.fdopen(fd, "wb") as fh:
                fh.write(Fernet.generate_key())
    return SecretBox(path.read_bytes().strip())
