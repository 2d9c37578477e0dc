"""OpenAI Models API. Ids hold ':' and '/', hence the path converters."""

import logging

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from service import api_models as m
from service import idempotency, model_download, model_import, models
from service.api.contract import PROJECT, openai_errors
from service.api.deps import get_ctx, project_principal
from service.api.routing import JSONRoute, database_read
from service.auth import ProjectPrincipal
from service.context import AppContext

log = logging.getLogger("hone.api")

router = APIRouter(route_class=JSONRoute, prefix="/v1/models", tags=["models"], responses=openai_errors(*PROJECT))


@router.get("", response_model=m.ModelList)
@database_read
def list_models(principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)):
    return models.list_models(ctx, principal)


_IMPORT_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "base_model"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "A PEFT LoRA adapter's folder as a tar (or tar.gz): adapter_config.json "
                            "and adapter_model.safetensors, and optionally SHA256SUMS, as GET "
                            "/v1/models/{model}/content gives it.",
                        },
                        "base_model": {"type": "string", "description": "The base model it was trained on."},
                        "suffix": {"type": "string", "description": "In the model's name, as a job's suffix."},
                    },
                }
            }
        },
    }
}


@router.post("/import", openapi_extra=_IMPORT_DOC, response_model=m.ModelObject, responses=openai_errors(413))
async def import_model(
    request: Request, principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)
):
    """Hone extension: a PEFT LoRA adapter trained elsewhere, for a base model of this server, becomes a tuned
    model of the project (checked whole before anything is stored)."""
    key = idempotency.check_key(request.headers.get("idempotency-key"))
    headers = request.headers
    imported = await model_import.import_adapter(
        ctx, principal, headers.get("content-type"), headers.get("content-length"), request.stream(), key
    )
    log.info("adapter imported", extra={"model": imported["id"]})
    return imported


@router.get(
    "/{model_id:path}/content",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Hone: the weights as a tar stream (its last member SHA256SUMS lists each file's SHA-256).",
            "content": {"application/x-tar": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
)
def download_model(
    model_id: str, principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)
):
    """Hone extension: a tuned model's or checkpoint's weights (adapter or full), tokenizer and serving files."""
    archive = model_download.archive(ctx, principal, model_id)
    disposition = f'attachment; filename="{archive.filename}"'
    return StreamingResponse(
        archive.chunks, media_type="application/x-tar", headers={"content-disposition": disposition}
    )


@router.get("/{model_id:path}", response_model=m.ModelObject)
@database_read
def retrieve_model(
    model_id: str, principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)
):
    return models.get_model(ctx, principal, model_id)


@router.delete("/{model_id:path}", response_model=m.ModelDeleted)
def delete_model(
    model_id: str, principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)
):
    deleted = models.delete_model(ctx, principal, model_id)
    log.info("model deleted")
    return deleted
