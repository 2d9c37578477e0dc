"""What every request and background loop needs, built once per app from settings."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from service.base_models import BaseModelRegistry
from service.db import Database
from service.hints import Hinter, NullHinter
from service.settings import Settings
from service.storage import BlobStorage, open_storage
from service.storage.metered import MeteredStorage

if TYPE_CHECKING:
    from service.auth import KeyCache

log = logging.getLogger("hone.context")


@dataclass
class AppContext:
    settings: Settings
    db: Database
    storage: BlobStorage
    base_models: BaseModelRegistry
    admin_key: str
    key_cache: KeyCache
    # What domain services tell the app after a change (service/hints.py); the app injects its own at start.
    hinter: Hinter = field(default_factory=NullHinter)

    @classmethod
    def build(cls, settings: Settings) -> AppContext:
        settings.server.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if settings.server.data_dir.stat().st_mode & 0o077:  # made by someone else: say so, but leave it as it is
            log.warning(
                "the data dir is open to other users; `chmod 700` it", extra={"path": str(settings.server.data_dir)}
            )
        db = Database(settings.resolved_database_url, settings.database.database_pool_size)
        if settings.database.auto_migrate:
            db.migrate()
        store = open_storage(
            settings.resolved_storage_url,
            s3_endpoint_url=settings.storage.s3_endpoint_url,
            s3_max_attempts=settings.storage.s3_max_attempts,
            s3_timeout_s=settings.storage.s3_timeout_s,
        )
        storage = MeteredStorage(store, backend=urlparse(settings.resolved_storage_url).scheme)
        from service.auth import KeyCache  # auth needs AppContext for its type hints

        return cls(
            settings,
            db,
            storage,
            BaseModelRegistry(settings.training.base_models, db),
            settings.server.admin_api_key or _local_admin_key(settings.server.data_dir),
            KeyCache(settings.server.key_cache_ttl_s),
        )


def _local_admin_key(data_dir: Path) -> str:
    """With no HONE_ADMIN_API_KEY, a key is made once and kept (mode 0600) in the data dir."""
    path = data_dir / "admin_api_key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"sk-hone-admin-{secrets.token_urlsafe(32)}\n")
        log.info("generated an admin API key", extra={"path": str(path)})
    return path.read_text().strip()
