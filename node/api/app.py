"""The admin API's application: its routers, its collaborators and its error answers."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from apiary.core.admin_token import require_admin_token
from apiary.core.errors import ApiaryError
from apiary.core.settings import NodeSettings
from apiary.node.api import dashboard, health, membership, metrics, rounds
from apiary.node.api import founding as ceremony
from apiary.node.api.audit import AuditLog
from apiary.node.api.deps import Founding, History, InviteIssuer, JoinControl, Sponsoring
from apiary.node.api.limits import BodySizeLimit, describe_errors
from apiary.node.metrics import NodeMetrics
from apiary.node.ports import NodeView


def create_app(
    settings: NodeSettings,
    *,
    node: NodeView,
    history: History,
    invites: InviteIssuer,
    sponsor: Sponsoring,
    founding: Founding,
    joiner: JoinControl | None,
    node_metrics: NodeMetrics | None = None,
) -> FastAPI:
    """The admin API of one node; `joiner` is None on a node that does not join.
    Refuses (AdminTokenRefused) to make one whose admin token is missing or weak."""
    require_admin_token(settings.admin_token, what=f"node {settings.name}'s admin API")
    app = FastAPI(
        title=f"Apiary node {settings.name}",
        version="1",
        description="Admin API of one hospital node of an Apiary swarm.",
        docs_url=None, redoc_url=None,  # served from the node's own assets: dashboard.py
    )
    app.state.settings = settings
    app.state.node = node
    app.state.history = history
    app.state.invites = invites
    app.state.sponsor = sponsor
    app.state.joiner = joiner
    app.state.founding = founding
    app.state.metrics = node_metrics or metrics.metrics_for(settings.name, history, node)
    app.add_exception_handler(ApiaryError, apiary_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_middleware(BodySizeLimit, max_bytes=settings.api_max_body_bytes)
    for router in (health.router, rounds.router, membership.router,
                   membership.invitee_router, ceremony.router, ceremony.open_router,
                   metrics.router):
        app.include_router(router)
    dashboard.install(app)
    app.add_middleware(AuditLog, token=settings.admin_token, also=[membership.invitee_router])
    return app


def apiary_error(_request: Request, exc: Exception) -> JSONResponse:
    """Any of the project's own errors, as ``{"detail": message}`` with its HTTP status."""
    status = exc.http_status if isinstance(exc, ApiaryError) else 500
    return JSONResponse({"detail": str(exc)}, status_code=status)


def invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    """422 with where each error is and what is wrong, never the input (FastAPI's default
    echoes it back: a huge body would come back whole)."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse({"detail": describe_errors(errors)}, status_code=422)
