"""The web console: static pages the control plane serves at /console, which talk to the public API only.

Everything it needs ships in this package (`static/`): HTML, CSS, vanilla JavaScript modules and the vendored
uPlot chart library (MIT, `static/vendor/uplot/`). No build step, no CDN. The browser keeps the API key in
sessionStorage and sends it as `Authorization: Bearer` to the same /v1 routes the SDKs call; these routes
themselves hold no secret and need no key (the page asks for it), so they are public and left out of the OpenAPI
document.
"""

from __future__ import annotations

from pathlib import Path

from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC = Path(__file__).resolve().parent / "static"

# The console's pages run only their own files: no inline script, nothing from another origin, never framed. uPlot
# sizes its elements through the CSSOM (el.style), which style-src does not govern, so no 'unsafe-inline' either.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "font-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


class ConsoleFiles(StaticFiles):
    """The package's static folder, `index.html` for the folder itself, with the security headers above. Assets are
    revalidated on every load (`no-cache`: an ETag round trip) so an upgraded server never runs yesterday's script."""

    def file_response(self, full_path, stat_result, scope: Scope, status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(SECURITY_HEADERS)
        response.headers["Cache-Control"] = "no-cache"
        return response


def _to_folder(_request) -> RedirectResponse:
    # The page's assets are relative to /console/: without the slash they would resolve against /.
    return RedirectResponse("/console/", status_code=308)


def routes() -> list[BaseRoute]:
    """The console's routes, for service/app.py: /console redirects to /console/, which serves static/."""
    return [
        Route("/console", _to_folder, methods=["GET", "HEAD"], include_in_schema=False),
        Mount("/console", app=ConsoleFiles(directory=STATIC, html=True), name="console"),
    ]
