"""Runs the control plane under uvicorn with JSON logs and a graceful shutdown."""

from __future__ import annotations

import uvicorn

from service.app import create_app
from service.logs import configure_logging
from service.settings import Settings


def serve(settings: Settings | None = None) -> None:
    settings = settings or Settings()
    configure_logging(settings.log_level)
    app = create_app(settings)
    # uvicorn stops accepting on SIGTERM/SIGINT, lets requests in flight finish, then runs the lifespan exit.
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=settings.graceful_shutdown_s)
