"""Admin routes for the base-model registry (a Hone extension beside the Administration API)."""

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from service import api_models as m
from service.api.contract import ADMIN, openai_errors
from service.api.deps import admin_principal, get_ctx
from service.api.routing import JSONRoute
from service.context import AppContext
from service.errors import NAME_CHARS, ErrorCode, NotFound, excerpt

router = APIRouter(
    route_class=JSONRoute,
    prefix="/v1/organization/base_models",
    tags=["admin"],
    dependencies=[Depends(admin_principal)],
    responses=openai_errors(*ADMIN),
)


class RegisterBaseModel(BaseModel):
    name: str = Field(min_length=1, max_length=256, description="The id jobs will use as `model`.")
    source: str = Field(min_length=1, max_length=1024, description="A local folder or a Hugging Face model id.")


@router.post("", response_model=m.BaseModelObject)
def register_base_model(body: RegisterBaseModel, ctx: AppContext = Depends(get_ctx)):
    return ctx.base_models.as_admin_api(ctx.base_models.register(body.name, body.source))


@router.get("", response_model=m.BaseModelList)
def list_base_models(ctx: AppContext = Depends(get_ctx)):
    return {"object": "list", "data": [ctx.base_models.as_admin_api(m) for m in ctx.base_models.all()]}


@router.get("/{name:path}", response_model=m.BaseModelObject)
def get_base_model(name: str, ctx: AppContext = Depends(get_ctx)):
    model = ctx.base_models.get(name)
    if model is None:
        raise NotFound(f"No such base model: {excerpt(name, NAME_CHARS)}", param="name", code=ErrorCode.NOT_FOUND)
    return ctx.base_models.as_admin_api(model)


@router.delete(
    "/{name:path}", response_model=m.BaseModelDeleted, responses=openai_errors(403)
)  # a built-in or configured one
def delete_base_model(name: str, ctx: AppContext = Depends(get_ctx)):
    ctx.base_models.unregister(name)
    return {"id": name, "object": "base_model", "deleted": True}
