"""What every `hone` command shares: connection options, a client, output (rich for people, `--json` for
scripts) and exit codes.

Exit codes (README's table): 0 done; 1 refused by the API (4xx) or invalid data; 2 bad command-line usage;
3 the server could not be reached, or a wait timed out; 4 the server failed (5xx); 5 what was waited for ended
badly (a job failed or was cancelled, an endpoint failed, an evaluation failed); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import datetime
import functools
import inspect
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Optional

import typer
from pydantic import BaseModel
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from hone.errors import APIConnectionError, APIError, APIStatusError, HoneError, WaitTimeoutError

if TYPE_CHECKING:
    from hone.client import Client

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_SERVER, EXIT_ENDED_BADLY = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Not a terminal (a pipe, a file, a test): never wrap or cut long ids to fit 80 columns.
    return Console(stderr=stderr, width=None if stream.isatty() else 10_000, highlight=False)


out = _console()
err = _console(stderr=True)


def plain(value: Any) -> Any:
    """An API object (or list of them) as JSON-ready data: the fields the server answered, its extras included."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def print_json(value: Any) -> None:
    if out.is_terminal:
        out.print_json(json.dumps(plain(value)))  # indented and coloured for people
    else:
        print(json.dumps(plain(value)))  # one line for scripts


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    grid = Table(*columns, box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False)
    for row in rows:
        grid.add_row(*(Text("" if cell is None else str(cell)) for cell in row))  # Text: no markup in data
    return grid


def fail(message: str, code: int = EXIT_REFUSED) -> NoReturn:
    err.print(Text.assemble(("error: ", "red"), message), soft_wrap=True)
    raise typer.Exit(code)


def exit_code(exc: HoneError) -> int:
    if isinstance(exc, (APIConnectionError, WaitTimeoutError)):
        return EXIT_UNREACHABLE
    if isinstance(exc, APIStatusError) and exc.status_code >= 500:
        return EXIT_SERVER
    return EXIT_REFUSED


def _report(exc: HoneError, as_json: bool) -> NoReturn:
    if as_json and isinstance(exc, APIError):
        status = exc.status_code if isinstance(exc, APIStatusError) else None
        print(
            json.dumps(
                {
                    "error": {
                        "message": exc.message,
                        "type": exc.type,
                        "param": exc.param,
                        "code": exc.code,
                        "status": status,
                    }
                }
            ),
            file=sys.stderr,
        )
        raise typer.Exit(exit_code(exc))
    fail(str(exc), exit_code(exc))


class Session:
    """One command's connection and output mode."""

    def __init__(self, base_url: str | None, key: str | None, as_json: bool, admin: bool):
        self._connection = (base_url, key, admin)
        self._client: Client | None = None
        self.as_json = as_json

    @property
    def client(self) -> Client:
        """Made on first use: the openai client under it takes a few tenths of a second to import."""
        if self._client is None:
            from hone.client import Client

            base_url, key, admin = self._connection
            self._client = Client(base_url, api_key=None if admin else key, admin_key=key if admin else None)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def show(self, value: Any, human: Any) -> None:
        """Prints `value` as JSON with --json, else `human` (text or a rich renderable; a callable is called
        only when needed)."""
        if self.as_json:
            print_json(value)
        else:
            out.print(human() if callable(human) else human, markup=False)


BASE_URL_OPTION = typer.Option(
    None, "--base-url", envvar="HONE_BASE_URL", show_default="http://127.0.0.1:8000", help="The Hone API's URL."
)
API_KEY_OPTION = typer.Option(None, "--api-key", envvar="HONE_API_KEY", help="A project API key.")
ADMIN_KEY_OPTION = typer.Option(None, "--admin-key", envvar="HONE_ADMIN_API_KEY", help="The admin API key.")
JSON_OPTION = typer.Option(False, "--json", help="Print JSON for scripts.")


def api_command(app: typer.Typer, name: str, *, admin: bool = False) -> Callable[[Callable], Callable]:
    """Registers `func(session, ...)` as `hone <group> <name>`, with --base-url, --api-key (or --admin-key) and
    --json added to its options; API errors become a message on stderr and an exit code.

    The added options are spliced into the signature Typer reads, so each command lists only its own."""

    def register(func: Callable) -> Callable:
        own = list(inspect.signature(func).parameters.values())[1:]  # all but `session`
        shared = [
            inspect.Parameter(
                "base_url", inspect.Parameter.KEYWORD_ONLY, default=BASE_URL_OPTION, annotation=Optional[str]
            ),
            inspect.Parameter(
                "key",
                inspect.Parameter.KEYWORD_ONLY,
                default=ADMIN_KEY_OPTION if admin else API_KEY_OPTION,
                annotation=Optional[str],
            ),
            inspect.Parameter("as_json", inspect.Parameter.KEYWORD_ONLY, default=JSON_OPTION, annotation=bool),
        ]

        @functools.wraps(func)
        def command(*args: Any, base_url: str | None, key: str | None, as_json: bool, **kwargs: Any) -> Any:
            session = Session(base_url, key, as_json, admin)
            try:
                return func(session, *args, **kwargs)
            except HoneError as exc:
                _report(exc, as_json)
            except KeyboardInterrupt:
                err.print("interrupted", markup=False)
                raise typer.Exit(EXIT_INTERRUPTED) from None
            finally:
                session.close()

        command.__signature__ = inspect.Signature(own + shared)  # type: ignore[attr-defined]
        command.__annotations__ = {
            **func.__annotations__,
            "base_url": Optional[str],
            "key": Optional[str],
            "as_json": bool,
        }
        app.command(name)(command)
        return func

    return register


def when(timestamp: int | None) -> str:
    if not timestamp:
        return ""
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")
