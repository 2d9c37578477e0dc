"""Dependencies shared by the routers: the app context and the authenticated caller."""

from __future__ import annotations

from fastapi import Request, Security
from fastapi.security import HTTPBearer

from service.auth import ProjectPrincipal, authenticate_admin, authenticate_project
from service.context import AppContext

# Declared for the OpenAPI document; the header itself is checked in service.auth.
_bearer = HTTPBearer(auto_error=False, description="A project API key, or the admin key for /v1/organization")


def get_ctx(request: Request) -> AppContext:
    return request.app.state.ctx


def project_principal(request: Request, _=Security(_bearer)) -> ProjectPrincipal:
    principal = authenticate_project(get_ctx(request), request.headers.get("authorization"))
    request.state.project_id = principal.project_id  # for the access log
    return principal


def admin_principal(request: Request, _=Security(_bearer)) -> None:
    authenticate_admin(get_ctx(request), request.headers.get("authorization"))
