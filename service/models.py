"""Models: the base-model registry plus each project's tuned models."""

from __future__ import annotations

from sqlalchemy import select

from service.auth import ProjectPrincipal
from service.context import AppContext
from service.db.tables import TunedModel
from service.endpoints import stop_model_endpoints
from service.errors import NotFound, PermissionDenied


def tuned_model_api(m: TunedModel) -> dict:
    return {"id": m.id, "object": "model", "created": m.created_at, "owned_by": m.project_id}


def _not_found(model_id: str) -> NotFound:
    return NotFound(f"The model '{model_id}' does not exist", param="model", code="model_not_found")


def list_models(ctx: AppContext, principal: ProjectPrincipal) -> dict:
    data = [ctx.base_models.as_api(m) for m in ctx.base_models.all()]
    with ctx.db.read() as session:
        tuned = session.execute(select(TunedModel).where(TunedModel.project_id == principal.project_id)
                                .order_by(TunedModel.seq.desc())).scalars().all()
    data += [tuned_model_api(m) for m in tuned]
    return {"object": "list", "data": data}


def _tuned(session, principal: ProjectPrincipal, model_id: str) -> TunedModel | None:
    return session.execute(select(TunedModel).where(TunedModel.id == model_id,
                                                    TunedModel.project_id == principal.project_id)).scalar()


def get_model(ctx: AppContext, principal: ProjectPrincipal, model_id: str) -> dict:
    base = ctx.base_models.get(model_id)
    if base is not None:
        return ctx.base_models.as_api(base)
    with ctx.db.read() as session:
        tuned = _tuned(session, principal, model_id)
    if tuned is None:
        raise _not_found(model_id)
    return tuned_model_api(tuned)


def delete_model(ctx: AppContext, principal: ProjectPrincipal, model_id: str) -> dict:
    if ctx.base_models.get(model_id) is not None:
        raise PermissionDenied(f"The model '{model_id}' is a base model and cannot be deleted.", param="model",
                               code="model_not_deletable")
    with ctx.db.write() as session:
        tuned = _tuned(session, principal, model_id)
        if tuned is None:
            raise _not_found(model_id)
        stop_model_endpoints(session, principal.project_id, model_id, f"The model '{model_id}' was deleted.")
        session.delete(tuned)
    ctx.storage.delete_prefix(tuned.storage_prefix)
    return {"id": model_id, "object": "model", "deleted": True}
