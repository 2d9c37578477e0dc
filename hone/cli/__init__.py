"""The `hone` command line, built on the SDK: every command talks to the API through `hone.Client`.

hone files upload train.jsonl        hone jobs create -t file-... --follow
hone jobs plot ftjob-...             hone chat ft:hone-tiny:... --once "hello"
hone --version                       eval "$(hone completion bash)"
"""

from __future__ import annotations

import os
import sys
from enum import Enum

import typer

from hone import __version__
from hone.cli.admin import keys_app, projects_app
from hone.cli.chat import chat
from hone.cli.common import api_command, fail
from hone.cli.endpoints import endpoints_app, models_app
from hone.cli.files import files_app
from hone.cli.jobs import jobs_app

PROG_NAME = "hone"
COMPLETE_VAR = "_HONE_COMPLETE"  # set by the completion scripts when they ask `hone` for candidates

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


def _print_version(value: bool) -> None:
    if value:
        print(f"hone {__version__}")
        raise typer.Exit(0)


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print Hone's version and exit."
    ),
) -> None:
    """Hone: self-hosted fine-tuning."""


@app.command()
def serve() -> None:
    """Start the control plane (settings from HONE_* environment variables)."""
    try:
        from service.server import serve as run_server  # the server's dependencies load only here
    except ImportError as exc:
        fail(f"hone serve needs the server's dependencies ({exc.name} is missing): pip install 'hone[server]'")
    run_server()


class Shell(str, Enum):
    bash = "bash"
    zsh = "zsh"
    fish = "fish"


@app.command()
def completion(shell: Shell = typer.Argument(..., help="bash, zsh or fish")) -> None:
    """Print a shell completion script: commands, options and choices complete on Tab.

    bash: eval "$(hone completion bash)" in ~/.bashrc; zsh: eval "$(hone completion zsh)" in ~/.zshrc (after
    compinit); fish: hone completion fish > ~/.config/fish/completions/hone.fish"""
    # Typer's own scripts: they call `hone` back with _HONE_COMPLETE set, which Typer answers from the commands.
    from typer._completion_shared import get_completion_script

    print(get_completion_script(prog_name=PROG_NAME, complete_var=COMPLETE_VAR, shell=shell.value))


def main(argv: list[str] | None = None) -> None:
    if COMPLETE_VAR in os.environ:  # a completion script asking for candidates: Typer answers, for each shell
        from typer._completion_classes import completion_init

        completion_init()
    app(args=argv if argv is not None else sys.argv[1:], prog_name=PROG_NAME, complete_var=COMPLETE_VAR)
