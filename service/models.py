"""Models: the base-model registry plus each project's tuned models, and those other projects shared with it."""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from service import checkpoint_permissions
from service.auth import ProjectPrincipal
from service.context import AppContext
from service.db.tables import TunedModel
from service.endpoints import resolve_model, stop_model_endpoints
from service.errors import NAME_CHARS, ErrorCode, InvalidRequest, NotFound, PermissionDenied, excerpt
from service.hints import Loop
from service.storage import BlobNotFound
from service.training_plan import LLAMA_PROJECTIONS


def tuned_model_api(m: TunedModel) -> dict:
    return {"id": m.id, "object": "model", "created": m.created_at, "owned_by": m.project_id}


def _not_found(model_id: str) -> NotFound:
    return NotFound(
        f"The model '{excerpt(model_id, NAME_CHARS)}' does not exist", param="model", code=ErrorCode.MODEL_NOT_FOUND
    )


def list_models(ctx: AppContext, principal: ProjectPrincipal) -> dict:
    data = [ctx.base_models.as_api(m) for m in ctx.base_models.all()]
    with ctx.db.read() as session:
        tuned = (
            session.execute(
                select(TunedModel).where(TunedModel.project_id == principal.project_id).order_by(TunedModel.seq.desc())
            )
            .scalars()
            .all()
        )
        shared = checkpoint_permissions.shared_models(session, principal.project_id)
    data += [tuned_model_api(m) for m in tuned]
    return {"object": "list", "data": data + shared}


def _tuned(session, principal: ProjectPrincipal, model_id: str) -> TunedModel | None:
    return session.execute(
        select(TunedModel).where(TunedModel.id == model_id, TunedModel.project_id == principal.project_id)
    ).scalar()


def get_model(ctx: AppContext, principal: ProjectPrincipal, model_id: str) -> dict:
    base = ctx.base_models.get(model_id)
    if base is not None:
        return ctx.base_models.as_api(base)
    with ctx.db.read() as session:
        tuned = _tuned(session, principal, model_id)
        shared = (
            [] if tuned is not None else checkpoint_permissions.shared_models(session, principal.project_id, model_id)
        )
    if tuned is not None:
        return tuned_model_api(tuned)
    if shared:
        return shared[0]
    raise _not_found(model_id)


def delete_model(ctx: AppContext, principal: ProjectPrincipal, model_id: str) -> dict:
    if ctx.base_models.get(model_id) is not None:
        raise PermissionDenied(
            f"The model '{model_id}' is a base model and cannot be deleted.",
            param="model",
            code=ErrorCode.MODEL_NOT_DELETABLE,
        )
    with ctx.db.write() as session:
        tuned = _tuned(session, principal, model_id)
        if tuned is None:
            if checkpoint_permissions.shared_models(session, principal.project_id, model_id):
                raise PermissionDenied(
                    f"The model '{excerpt(model_id, NAME_CHARS)}' is shared with this project by another one: "
                    "only its owner can delete it.",
                    param="model",
                    code=ErrorCode.MODEL_NOT_DELETABLE,
                )
            raise _not_found(model_id)
        stop_model_endpoints(session, principal.project_id, model_id, f"The model '{model_id}' was deleted.")
        grantees = checkpoint_permissions.drop_model(session, model_id)
        session.delete(tuned)
    ctx.storage.delete_prefix(tuned.storage_prefix)
    for project_id in (principal.project_id, *grantees):
        ctx.hinter.routes_changed(project_id)
    ctx.hinter.wake(Loop.ENDPOINTS)  # its engine and local copy go now
    return {"id": model_id, "object": "model", "deleted": True}


# --- continuation: a tuned model or checkpoint as the start of a new job ------------------------------


@dataclass(frozen=True)
class Parent:
    """The weights a continued job starts from, and the shape they force on it."""

    name: str  # the tuned model's name, or the checkpoint's snapshot name
    base_model: str  # the root base model (a continued job records its root, so chains resolve in one step)
    prefix: str  # storage folder of the adapter or full weights
    shape: dict  # tuning_mode, and for an adapter lora_rank, lora_alpha, lora_target_modules


def continuation_parent(ctx: AppContext, session: Session, project_id: str, model: str) -> Parent | None:
    """None for a base model; the parent for a tuned model or checkpoint of the project (by the same lookup
    the deployer serves them by). Anything else raises NotFound, another project's models included."""
    served = resolve_model(ctx, session, project_id, model)
    if served.kind == "base":
        return None
    prefix = served.weights_prefix
    assert prefix is not None  # tuned models and checkpoints have their weights' folder
    if served.kind == "full":
        return Parent(served.name, served.base_model, prefix, {"tuning_mode": "full"})
    # The adapter's own config, not its job's hyperparameters: those may say "auto", resolved by rules that change.
    try:
        config = json.loads(ctx.storage.read_bytes(prefix + "adapter_config.json"))
    except BlobNotFound:
        raise InvalidRequest(
            f"The weights of model {model} are no longer in storage, so it cannot be continued.",
            param="model",
            code=ErrorCode.MODEL_NOT_AVAILABLE,
        ) from None
    order = {name: i for i, name in enumerate(LLAMA_PROJECTIONS)}
    targets = sorted(config["target_modules"], key=lambda m: (order.get(m, len(order)), m))
    return Parent(
        served.name,
        served.base_model,
        prefix,
        {
            "tuning_mode": "lora",
            "lora_rank": config["r"],
            "lora_alpha": float(config["lora_alpha"]),
            "lora_target_modules": targets,
        },
    )
