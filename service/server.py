"""Runs the control plane under uvicorn with JSON logs and a graceful shutdown."""

from __future__ import annotations

import os
import shutil
from typing import Any

import uvicorn

from service.logs import configure_logging
from service.settings import Settings


def serve(settings: Settings | None = None) -> None:
    # Everything this server writes is its user's alone (files 0600, folders 0700): the data dir holds the
    # admin key, every project's datasets and weights, and the database. A umask, set before anything is written,
    # also covers what is written by code that takes no mode (SQLite's database and its -wal/-shm, transformers'
    # save_pretrained, prometheus-client's multiprocess files) and by the trainers, engines and model builds
    # started from here, which inherit it. Stricter bits already set stay.
    os.umask(os.umask(0o077) | 0o077)
    settings = settings or Settings()
    configure_logging(settings.server.log_level)
    # uvicorn stops accepting on SIGTERM/SIGINT, lets requests in flight finish, then runs the lifespan exit.
    options: dict[str, Any] = dict(
        host=settings.server.host,
        port=settings.server.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=settings.server.graceful_shutdown_s,
        timeout_keep_alive=settings.server.http_keep_alive_s,
        http=_http_protocol(),
    )
    if settings.server.workers <= 1:
        from service.warm_start import prewarm_trainers

        prewarm_trainers(settings)  # in a thread, while the app imports and starts
        from service.app import create_app

        uvicorn.run(create_app(settings), **options)
        return
    # Workers are fresh interpreters that build their app from the same HONE_* environment. They share
    # metrics through files (prometheus-client reads this variable when it is first imported).
    settings.server.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if settings.database.auto_migrate:  # once, here: workers migrating side by side would race on SQLite
        from service.db import Database

        database = Database(settings.resolved_database_url)
        database.migrate()
        database.dispose()
    metrics_dir = settings.metrics_multiprocess_dir
    assert metrics_dir is not None  # set with more than one worker
    shutil.rmtree(metrics_dir, ignore_errors=True)  # counters restart with the server, as in one process
    metrics_dir.mkdir(mode=0o700, parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    uvicorn.run("service.server:worker_app", factory=True, workers=settings.server.workers, **options)


def _http_protocol() -> Any:
    """uvicorn's httptools protocol sending each response's head with its body (service/http_protocol.py); uvicorn's
    own choice where httptools is missing."""
    try:
        from service.http_protocol import HttpProtocol
    except ImportError:
        return "auto"
    return HttpProtocol


def worker_app():
    """One worker's app (uvicorn's factory, with several workers)."""
    from service.app import create_app

    settings = Settings()
    configure_logging(settings.server.log_level)
    return create_app(settings)
