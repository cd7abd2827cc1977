"""The node's pages: the dashboard at ``/`` and the API docs (Swagger UI) at ``/docs``.

Every asset comes from the node itself (the dashboard's files in ``static/``, Swagger UI
from the ``fastapi_offline`` package), so the pages work on a hospital network without
internet. The dashboard's Content-Security-Policy allows scripts, styles and requests to
this node only and no inline script; the docs page allows exactly its one inline script,
by its hash. (No ReDoc page: its bundle loads a logo from the internet.)

The dashboard reads ``GET /v1/overview`` without a token. Its actions (invite, approve)
send the admin token the user pastes into the page, which keeps it in memory only.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from apiary.node.api import overview

STATIC_DIR = Path(__file__).parent / "static"
DOCS_ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
DASHBOARD_ASSETS = "/static/dashboard"
DOCS_ASSETS = "/static/docs"

DASHBOARD_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                 "connect-src 'self'; base-uri 'none'; form-action 'none'; "
                 "frame-ancestors 'none'")
SAFETY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                  "X-Frame-Options": "DENY"}
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def install(app: FastAPI) -> None:
    """Add the overview, the dashboard and the docs pages to the admin API `app` (made with
    ``docs_url=None, redoc_url=None``, so FastAPI's CDN-loading pages are off)."""
    app.state.overview = overview.OverviewSource(app.state.settings)
    app.include_router(overview.router)
    app.mount(DASHBOARD_ASSETS, StaticFiles(directory=STATIC_DIR), name="dashboard-assets")
    app.mount(DOCS_ASSETS, StaticFiles(directory=DOCS_ASSETS_DIR), name="docs-assets")
    app.add_api_route("/", to_dashboard, methods=["GET"], include_in_schema=False)
    app.add_api_route("/dashboard", dashboard, methods=["GET"], include_in_schema=False)
    app.add_api_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)


def to_dashboard() -> RedirectResponse:
    return RedirectResponse("/dashboard", status_code=307)


def dashboard() -> FileResponse:
    return FileResponse(STATIC_DIR / "dashboard.html", media_type="text/html",
                        headers={"Content-Security-Policy": DASHBOARD_CSP,
                                 "Cache-Control": "no-cache", **SAFETY_HEADERS})


def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    page = get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - API docs",
        swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
        swagger_ui_parameters={"validatorUrl": None},
    )
    return _docs_page(page)


def docs_csp(html: str) -> str:
    """The docs page's policy: this node's assets, and the page's own inline scripts by
    their SHA-256 (Swagger UI styles elements inline and draws data: images)."""
    hashes = " ".join(f"'sha256-{_sha256(script)}'" for script in _INLINE_SCRIPT.findall(html))
    return (f"default-src 'none'; script-src 'self' {hashes}; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _docs_page(page: HTMLResponse) -> HTMLResponse:
    html = bytes(page.body).decode()
    return HTMLResponse(html, headers={"Content-Security-Policy": docs_csp(html),
                                       **SAFETY_HEADERS})


def _sha256(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
