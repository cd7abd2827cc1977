"""The node's admin API (FastAPI): health, status, round history, model, Prometheus metrics.

``/v1/health`` and ``/metrics`` are open (for load balancers and scrapers), and
``POST /v1/members`` is authorised by its single-use invite; everything else needs
``Authorization: Bearer <admin token>``.
"""


import secrets
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from pydantic import BaseModel, Field

from apiary.node.onboarding import JoinRequest, Refused, Sponsor

if TYPE_CHECKING:
    from apiary.node.runtime import NodeRuntime


class Health(BaseModel):
    status: str
    node: str
    round: int


class RoundHistory(BaseModel):
    node: str
    rounds: list[dict[str, Any]]


class InviteRequest(BaseModel):
    ttl_s: float = Field(3600.0, gt=0, le=30 * 86400, description="lifetime in seconds")


class InviteCreated(BaseModel):
    invite: str
    expires_at: float
    sponsor: str


class JoinStart(BaseModel):
    sponsor_url: str = Field(description="the sponsor node's admin API URL")
    invite: str


class ModelInfo(BaseModel):
    node: str
    round: int
    params: int
    weights_digest: str | None
    evaluation: dict[str, Any] | None


def create_app(runtime: "NodeRuntime") -> FastAPI:
    app = FastAPI(
        title=f"Apiary node {runtime.settings.name}",
        version="1",
        description="Admin API of one hospital node of an Apiary swarm.",
    )
    bearer = HTTPBearer(auto_error=False)

    def require_admin(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if credentials is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing bearer token",
                                headers={"WWW-Authenticate": "Bearer"})
        if not secrets.compare_digest(credentials.credentials.encode(),
                                      runtime.settings.admin_token.encode()):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    admin = [Depends(require_admin)]
    registry = CollectorRegistry()
    labels = ["node"]
    gauges = {
        "round": Gauge("apiary_round", "last round whose global model this node holds",
                       labels, registry=registry),
        "accuracy": Gauge("apiary_accuracy", "global model accuracy on this node's test split",
                          labels, registry=registry),
        "heldout_accuracy": Gauge("apiary_heldout_accuracy",
                                  "global model accuracy on the held-out set", labels,
                                  registry=registry),
        "rounds": Gauge("apiary_rounds_completed", "rounds completed", labels,
                        registry=registry),
    }
    phase_gauge = Gauge("apiary_phase_seconds", "seconds of each phase in the last round",
                        ["node", "phase"], registry=registry)

    @app.get("/v1/health", response_model=Health, tags=["node"])
    def health() -> Health:
        """Liveness: the node's process answers."""
        return Health(status="ok", node=runtime.settings.name, round=runtime.state.round)

    @app.get("/v1/status", dependencies=admin, tags=["node"])
    def node_status() -> dict[str, Any]:
        """Node, mode, round, members and the last round's metrics."""
        return runtime.status()

    @app.get("/v1/rounds", response_model=RoundHistory, dependencies=admin, tags=["rounds"])
    def rounds() -> RoundHistory:
        """Per-round accuracy, loss, phase timings and on-chain digests."""
        return RoundHistory(node=runtime.settings.name,
                            rounds=runtime.state.snapshot()["history"])

    @app.get("/v1/model", response_model=ModelInfo, dependencies=admin, tags=["model"])
    def model() -> ModelInfo:
        """The current global model's digest and its evaluation."""
        snapshot = runtime.state.snapshot()
        last = snapshot["history"][-1] if snapshot["history"] else None
        evaluation = None
        if last:
            evaluation = {k: last[k] for k in ("accuracy", "auc", "loss", "heldout_accuracy",
                                                "heldout_auc")}
        return ModelInfo(node=runtime.settings.name, round=snapshot["round"],
                         params=runtime.trainer.param_count,
                         weights_digest=snapshot["weights_digest"], evaluation=evaluation)

    sponsor = Sponsor(runtime)

    @app.exception_handler(Refused)
    def refused(_request: Request, exc: Refused) -> JSONResponse:
        """A refused membership call: its status and reason, as HTTPException would give."""
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.post("/v1/invites", status_code=201, dependencies=admin, tags=["membership"])
    def create_invite(request: InviteRequest) -> InviteCreated:
        """A single-use invite for a new hospital; the token is shown only in this answer."""
        token, expires_at = runtime.invites.create(request.ttl_s)
        return InviteCreated(invite=token, expires_at=expires_at,
                             sponsor=runtime.settings.name)

    @app.post("/v1/members", tags=["membership"],
              responses={202: {"description": "awaiting approval by a majority"},
                         403: {"description": "invalid invite"},
                         409: {"description": "invite used, or already a member"},
                         410: {"description": "invite expired"}})
    def admit_member(request: JoinRequest, response: Response) -> dict[str, Any]:
        """Called by a joining node with its invite: registers it on chain, then hands over
        the swarm key wrapped to its X25519 key, its TLS certificate and the global model."""
        code, body = sponsor.admit(request)
        response.status_code = code
        return body

    @app.post("/v1/members/{address}/approval", dependencies=admin, tags=["membership"])
    def approve_member(address: str) -> dict[str, Any]:
        """Majority rule: this member approves a proposed newcomer."""
        return sponsor.approve(address)

    @app.delete("/v1/members/{address}", dependencies=admin, tags=["membership"])
    def remove_member(address: str) -> dict[str, Any]:
        """Deactivate a member on chain and rotate the remaining members to a fresh HE key."""
        return sponsor.remove(address)

    @app.post("/v1/join", status_code=202, dependencies=admin, tags=["membership"])
    def join(request: JoinStart) -> dict[str, Any]:
        """Join a swarm through a sponsor's API with its invite (runs in the background)."""
        joiner = runtime.joiner
        if runtime.ready.is_set() and runtime.settings.mode == "swarm" and runtime.contract:
            raise HTTPException(409, "this node is already a swarm member")
        if joiner is None or joiner.busy:
            raise HTTPException(409, "a join is already in progress")
        joiner.start(request.sponsor_url, request.invite)
        return joiner.progress()

    @app.get("/v1/join", dependencies=admin, tags=["membership"])
    def join_progress() -> dict[str, Any]:
        """Where this node's join stands: generating keys, requesting admission,
        awaiting approval, verifying, member or failed."""
        if runtime.joiner is None:
            raise HTTPException(404, "this node does not join")
        return runtime.joiner.progress()

    @app.get("/metrics", response_class=PlainTextResponse, tags=["node"])
    def metrics() -> str:
        """Prometheus text format."""
        snapshot = runtime.state.snapshot()
        name = runtime.settings.name
        gauges["round"].labels(name).set(snapshot["round"])
        gauges["rounds"].labels(name).set(len(snapshot["history"]))
        if snapshot["history"]:
            last = snapshot["history"][-1]
            gauges["accuracy"].labels(name).set(last["accuracy"] or 0.0)
            if last["heldout_accuracy"] is not None:
                gauges["heldout_accuracy"].labels(name).set(last["heldout_accuracy"])
            for phase, seconds in last["seconds"].items():
                phase_gauge.labels(name, phase).set(seconds)
        return generate_latest(registry).decode()

    return app
