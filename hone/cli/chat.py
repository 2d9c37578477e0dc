"""`hone chat MODEL`: talk to a tuned model, its tokens printed as they are generated.

The session reads lines with the standard library's `readline` where the terminal has it (editing, and history
kept across sessions in ~/.cache/hone/chat_history, or HONE_CHAT_HISTORY). Lines that start with `/` are the
session's own commands, never sent to the model; `//text` sends `/text`."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from hone.cli.common import Session, err, fail, out, print_json

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

HISTORY_LENGTH = 1000
HELP = """commands (never sent to the model):
  /help           this list
  /exit, /quit    end the session (so does Ctrl-D)
  /clear          forget the conversation (the system message stays); /reset is the same
  /model [NAME]   show the model, or talk to NAME from now on
  /system [TEXT]  show the system message, or start over with TEXT as the system message
  //text          send "/text" to the model"""


def history_file() -> Path:
    """Where the prompts of past sessions are kept: HONE_CHAT_HISTORY, else the user's cache folder."""
    if explicit := os.environ.get("HONE_CHAT_HISTORY"):
        return Path(explicit)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "hone" / "chat_history"


class Conversation:
    """What a session holds (the model, the system message, the turns so far) and what its lines do.

    `ask(model, messages)` sends the conversation and returns the answer; `say(text)` shows a local message."""

    def __init__(
        self,
        model: str,
        system: str | None,
        ask: Callable[[str, list[ChatCompletionMessageParam]], str],
        say: Callable[[str], None],
    ) -> None:
        self.model, self.system, self._ask, self._say = model, system, ask, say
        self.turns: list[ChatCompletionMessageParam] = []

    def messages(self) -> list[ChatCompletionMessageParam]:
        start: list[ChatCompletionMessageParam] = [{"role": "system", "content": self.system}] if self.system else []
        return start + self.turns

    def handle(self, line: str) -> bool:
        """Acts on one line; False once the session should end."""
        text = line.strip()
        if not text:
            return True
        if text.startswith("/") and not text.startswith("//"):
            return self._command(text)
        if text.startswith("//"):
            text = text[1:]
        self.turns.append({"role": "user", "content": text})
        answer = self._ask(self.model, self.messages())
        self.turns.append({"role": "assistant", "content": answer})
        return True

    def _command(self, text: str) -> bool:
        name, _, argument = text.partition(" ")
        argument = argument.strip()
        if name in ("/exit", "/quit"):
            return False
        if name == "/help":
            self._say(HELP)
        elif name in ("/clear", "/reset"):
            self.turns = []
            self._say("conversation cleared")
        elif name == "/model":
            if argument:
                self.model = argument
            self._say(f"model: {self.model}")
        elif name == "/system":
            if argument:
                self.system, self.turns = argument, []
                self._say("system message set; conversation cleared")
            else:
                self._say(f"system: {self.system}" if self.system else "no system message")
        else:
            self._say(f"error: unknown command {name} (/help lists them; //text sends /text)")
        return True


def _ask(
    session: Session,
    model: str,
    messages: list[ChatCompletionMessageParam],
    stream: bool,
    temperature: float | None,
    max_tokens: int | None,
) -> str:
    """Sends the conversation; prints the answer (as it streams in) and returns it."""
    if session.as_json:
        completion = session.client.chat(model, messages, temperature=temperature, max_tokens=max_tokens)
        print_json(completion)
        return completion.text
    if not stream:
        answer = session.client.chat(model, messages, temperature=temperature, max_tokens=max_tokens).text
        out.print(answer, markup=False, highlight=False)
        return answer
    parts = []
    for chunk in session.client.chat(model, messages, stream=True, temperature=temperature, max_tokens=max_tokens):
        parts.append(chunk.text)
        out.print(chunk.text, end="", markup=False, highlight=False)
        out.file.flush()
    out.print()
    return "".join(parts)


def _served_model(session: Session, model: str) -> str:
    """The model to talk to: a job id stands for its tuned model. Waits while its endpoint is deploying (right
    after a job succeeds), instead of failing with 503."""
    if model.startswith("ftjob-"):
        job = session.client.jobs.retrieve(model)
        if not job.fine_tuned_model:
            fail(f"job {job.id} is {job.status}: it has no tuned model yet")
        model = job.fine_tuned_model
    for endpoint in session.client.endpoints.list(model=model):
        if endpoint.state == "deploying":
            err.print(f"waiting for endpoint {endpoint.id} to be ready...", markup=False)
            session.client.endpoints.wait(endpoint.id)
    return model


def _line_reader(interactive: bool) -> tuple[Callable[[], str], Callable[[], None]]:
    """(read one line, save the history): readline's editing and history on a terminal, plain lines otherwise."""
    if not interactive:
        return (lambda: input()), (lambda: None)
    try:
        import readline
    except ImportError:  # Windows without pyreadline: plain input, no history
        return (lambda: input("you> ")), (lambda: None)
    path = history_file()
    try:
        readline.read_history_file(path)
    except OSError:
        pass  # none yet
    readline.set_history_length(HISTORY_LENGTH)

    def save() -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(path)
        except OSError as exc:
            err.print(f"could not keep the chat history in {path}: {exc}", markup=False)

    return (lambda: input("you> ")), save


def chat(
    session: Session,
    model: str,
    once: str | None = typer.Option(None, "--once", help="Ask this one prompt, print the answer, exit."),
    system: str | None = typer.Option(None, "--system", help="A system message to start with."),
    temperature: float | None = typer.Option(None, "--temperature"),
    max_tokens: int | None = typer.Option(None, "--max-tokens"),
    stream: bool = typer.Option(True, "--stream/--no-stream", help="Print tokens as they come."),
):
    """Chat with a model (a tuned model, checkpoint or base model; or a job id, for its tuned model): an interactive
    session with line editing and history (/help lists its commands, /exit or Ctrl-D ends), or one --once prompt."""
    model = _served_model(session, model)
    conversation = Conversation(
        model,
        system,
        ask=lambda m, messages: _ask(session, m, messages, stream, temperature, max_tokens),
        say=lambda text: err.print(text, markup=False, highlight=False),
    )
    if once is not None:
        conversation.handle("//" + once if once.startswith("/") else once)
        return
    interactive = sys.stdin.isatty() and out.is_terminal
    if interactive:
        err.print(f"chatting with {model}; /help lists the commands, /exit or Ctrl-D ends", markup=False)
    read, save = _line_reader(interactive)
    try:
        while True:
            try:
                line = read()
            except EOFError:
                break
            except KeyboardInterrupt:  # Ctrl-C drops the line being typed, as a shell does; Ctrl-D ends
                err.print()
                continue
            if not conversation.handle(line):
                break
    finally:
        save()
