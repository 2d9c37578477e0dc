"""`hone chat MODEL`: talk to a tuned model, its tokens printed as they are generated."""

from __future__ import annotations

import typer

from hone.cli.common import Session, err, fail, out, print_json

EXIT_WORDS = {"/exit", "/quit"}


def _ask(session: Session, model: str, messages: list[dict], stream: bool, params: dict) -> str:
    """Sends the conversation; prints the answer (as it streams in) and returns it."""
    if session.as_json:
        completion = session.client.chat(model, messages, **params)
        print_json(completion)
        return completion.text
    if not stream:
        answer = session.client.chat(model, messages, **params).text
        out.print(answer, markup=False, highlight=False)
        return answer
    parts = []
    for chunk in session.client.chat(model, messages, stream=True, **params):
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
    session (/reset starts over, /exit or Ctrl-D ends), or one --once prompt."""
    model = _served_model(session, model)
    params = {"temperature": temperature, "max_tokens": max_tokens}
    history = [{"role": "system", "content": system}] if system else []
    if once is not None:
        _ask(session, model, history + [{"role": "user", "content": once}], stream, params)
        return
    interactive = out.is_terminal
    if interactive:
        err.print(f"chatting with {model}; /reset starts over, /exit or Ctrl-D ends", markup=False)
    while True:
        try:
            prompt = out.input("[bold]you>[/] ") if interactive else input()
        except (EOFError, KeyboardInterrupt):
            break
        if prompt.strip() in EXIT_WORDS:
            break
        if prompt.strip() == "/reset":
            history = history[:1] if system else []
            continue
        if not prompt.strip():
            continue
        history.append({"role": "user", "content": prompt})
        history.append({"role": "assistant", "content": _ask(session, model, history, stream, params)})
