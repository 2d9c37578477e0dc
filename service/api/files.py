"""OpenAI Files API."""

import base64
import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from service import api_models as m
from service import files
from service.api.contract import PROJECT, enum_query, limit_query, openai_errors
from service.api.deps import get_ctx, project_principal
from service.api.routing import JSONRoute, database_read
from service.auth import ProjectPrincipal
from service.context import AppContext
from service.pagination import check_limit

router = APIRouter(route_class=JSONRoute, prefix="/v1/files", tags=["files"], responses=openai_errors(*PROJECT))

log = logging.getLogger("hone.api")

_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string", "enum": list(files.UPLOAD_PURPOSES)},
                        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
                        "expires_after[seconds]": {"type": "integer"},
                    },
                }
            }
        },
    }
}

_CONTENT_DOC: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The file's bytes (a fine-tune-results CSV base64-encoded, as OpenAI serves it).",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@router.post("", openapi_extra=_UPLOAD_DOC, response_model=m.FileObject, responses=openai_errors(413))
async def create_file(
    request: Request, principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)
):
    # The body is parsed as a stream so that large files never sit in memory.
    created = await files.create_file(
        ctx, principal, request.headers.get("content-type"), request.headers.get("content-length"), request.stream()
    )
    log.info(
        "file uploaded", extra={"file_id": created["id"], "purpose": created["purpose"], "bytes": created["bytes"]}
    )
    return created


@router.get("", response_model=m.FileList)
def list_files(
    purpose: str | None = None,
    order: str = enum_query("desc", ("asc", "desc")),
    after: str | None = None,
    limit: int = limit_query(10000, 10000),
    principal: ProjectPrincipal = Depends(project_principal),
    ctx: AppContext = Depends(get_ctx),
):
    return files.list_files(ctx, principal, purpose=purpose, order=order, after=after, limit=check_limit(limit, 10000))


@router.get("/{file_id:path}/content", response_class=Response, responses=_CONTENT_DOC)
def file_content(
    file_id: str, principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)
):
    row, chunks = files.file_content(ctx, principal, file_id)
    if row.purpose == "fine-tune-results" and ctx.settings.files.result_files_base64:
        # OpenAI serves result CSVs base64-encoded and clients decode them; match it.
        return Response(base64.b64encode(b"".join(chunks)), media_type="application/octet-stream")
    return StreamingResponse(chunks, media_type="application/octet-stream", headers={"content-length": str(row.bytes)})


@router.get("/{file_id:path}", response_model=m.FileObject)
@database_read
def retrieve_file(
    file_id: str, principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)
):
    return files.get_file(ctx, principal, file_id)


@router.delete("/{file_id:path}", response_model=m.FileDeleted)
def delete_file(
    file_id: str, principal: ProjectPrincipal = Depends(project_principal), ctx: AppContext = Depends(get_ctx)
):
    deleted = files.delete_file(ctx, principal, file_id)
    log.info("file deleted")
    return deleted
