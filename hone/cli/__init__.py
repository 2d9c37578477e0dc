"""The `hone` command line, built on the SDK: every command talks to the API through `hone.Client`.

hone files upload train.jsonl        hone jobs create -t file-... --follow
hone jobs plot ftjob-...             hone chat ft:hone-tiny:... --once "hello"
"""

from __future__ import annotations

import sys

import typer

from hone.cli.admin import keys_app, projects_app
from hone.cli.chat import chat
from hone.cli.common import api_command, fail
from hone.cli.endpoints import endpoints_app, models_app
from hone.cli.files import files_app
from hone.cli.jobs import jobs_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Hone: self-hosted fine-tuning.")
for group, name in (
    (files_app, "files"),
    (jobs_app, "jobs"),
    (models_app, "models"),
    (endpoints_app, "endpoints"),
    (projects_app, "projects"),
    (keys_app, "keys"),
):
    app.add_typer(group, name=name)
api_command(app, "chat")(chat)


@app.command()
def serve() -> None:
    """Start the control plane (settings from HONE_* environment variables)."""
    try:
        from service.server import serve as run_server  # the server's dependencies load only here
    except ImportError as exc:
        fail(f"hone serve needs the server's dependencies ({exc.name} is missing): pip install 'hone[server]'")
    run_server()


def main(argv: list[str] | None = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:])
