"""`hone endpoints` and `hone models`: what is served, and the models a project can use."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from hone.cli.common import EXIT_ENDED_BADLY, Session, api_command, fail, table, when

if TYPE_CHECKING:
    from hone.types import CheckpointPermission, Endpoint

endpoints_app = typer.Typer(no_args_is_help=True, help="Endpoints serving tuned models (project key).")
models_app = typer.Typer(no_args_is_help=True, help="Base and tuned models (project key).")


def _row(ep: Endpoint) -> tuple[str, str, str, str | None, str]:
    problem = ep.error.message if ep.error and ep.state in ("failed", "deploying") else ""
    return ep.id, ep.state, ep.model, ep.engine, problem


COLUMNS = ["id", "state", "model", "engine", "error"]


@api_command(endpoints_app, "list")
def endpoints_list(
    session: Session, model: str | None = typer.Option(None, "--model", help="Only this model's endpoints.")
):
    """List endpoints, newest first."""
    endpoints = list(session.client.endpoints.list(model=model))
    session.show(endpoints, lambda: table(COLUMNS, [_row(ep) for ep in endpoints]))


@api_command(endpoints_app, "get")
def endpoints_get(session: Session, endpoint_id: str):
    """Show an endpoint: state, engine, usage."""
    ep = session.client.endpoints.retrieve(endpoint_id)
    usage = ep.usage
    session.show(
        ep,
        lambda: (
            f"{ep.id}  {ep.state}  {ep.model}\n"
            f"base {ep.base_model}  kind {ep.kind}  engine {ep.engine}  restarts {ep.restarts}  ready since "
            f"{when(ep.ready_at) or '-'}\n"
            f"requests {usage.requests}  errors {usage.errors}  tokens {usage.prompt_tokens} in / "
            f"{usage.completion_tokens} out" + (f"\nerror: {ep.error.message}" if ep.error else "")
        ),
    )


@api_command(endpoints_app, "create")
def endpoints_create(
    session: Session,
    model: str,
    wait: bool = typer.Option(False, "--wait", help="Wait until it is ready (or failed)."),
    timeout: float = typer.Option(300, "--timeout", help="Seconds to wait with --wait."),
):
    """Serve a tuned model (ft:...), a checkpoint, or a base model."""
    ep = session.client.endpoints.create(model)
    if wait:
        ep = session.client.endpoints.wait(ep.id, timeout=timeout)
    session.show(ep, lambda: table(COLUMNS, [_row(ep)]))
    if wait and ep.state != "ready":
        raise typer.Exit(EXIT_ENDED_BADLY)


@api_command(endpoints_app, "delete")
def endpoints_delete(session: Session, endpoint_id: str):
    """Stop serving (the record stays, stopped)."""
    session.show(session.client.endpoints.delete(endpoint_id), f"deleted {endpoint_id}")


@api_command(models_app, "list")
def models_list(session: Session):
    """List base models and this project's tuned models."""
    models = session.client.models.list().data
    session.show(
        models, lambda: table(["id", "owned by", "created"], [(m.id, m.owned_by, when(m.created)) for m in models])
    )


@api_command(models_app, "download")
def models_download(
    session: Session,
    model: str,
    output: Path | None = typer.Option(
        None, "--output", "-o", help="where to save the .tar (default: named after the model)"
    ),
):
    """Download a tuned model's or checkpoint's weights (adapter or full), checked against the archive's SHA256SUMS."""
    saved = session.client.models.download(model, output)
    session.show({"model": model, "path": str(saved)}, f"saved {model} to {saved}")


@api_command(models_app, "import")
def models_import(
    session: Session,
    path: Path = typer.Argument(
        ..., exists=True, help="The adapter's folder (adapter_config.json, adapter_model.safetensors), or a .tar of it."
    ),
    base_model: str = typer.Option(..., "--base-model", help="The base model it was trained on."),
    suffix: str | None = typer.Option(None, "--suffix", help="In the model's name, as a job's suffix."),
):
    """Import a PEFT LoRA adapter trained elsewhere; prints the new model's name (checked whole before it is stored)."""
    model = session.client.models.import_adapter(path, base_model=base_model, suffix=suffix)
    session.show(model, model.id)


def _permissions_table(permissions: list[CheckpointPermission]) -> Any:
    return table(["id", "project", "created"], [(p.id, p.project_id, when(p.created_at)) for p in permissions])


@api_command(models_app, "share", admin=True)
def models_share(
    session: Session,
    model: str,
    projects: list[str] = typer.Option(..., "--project", help="A project to share it with (repeatable)."),
):
    """Let other projects use a tuned model or checkpoint: list, serve, call and continue it (admin key)."""
    permissions = session.client.models.share(model, projects).data
    session.show(permissions, lambda: _permissions_table(permissions))


@api_command(models_app, "permissions", admin=True)
def models_permissions(session: Session, model: str):
    """The projects a tuned model or checkpoint is shared with (admin key)."""
    permissions = list(session.client.models.permissions(model))
    session.show(permissions, lambda: _permissions_table(permissions))


@api_command(models_app, "unshare", admin=True)
def models_unshare(
    session: Session, model: str, project: str = typer.Option(..., "--project", help="The project to revoke.")
):
    """Stop sharing a model with a project: its endpoints of the model stop (admin key)."""
    found = list(session.client.models.permissions(model, project_id=project))
    if not found:
        fail(f"{model} is not shared with {project}")
    session.show(session.client.models.unshare(model, found[0].id), f"unshared {model} from {project}")


@api_command(models_app, "delete")
def models_delete(session: Session, model: str):
    """Delete a tuned model: its endpoints stop and its weights are removed."""
    session.show(session.client.models.delete(model), f"deleted {model}")
