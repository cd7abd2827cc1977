"""Liveness (``/v1/health``) and readiness (``/v1/ready``), both open to probes."""

from __future__ import annotations

from fastapi import APIRouter, Response

from apiary.node.api.deps import HistoryDep, NodeDep, SettingsDep
from apiary.node.ports import ReadinessFacts
from apiary.node.schemas import Health, Ready

router = APIRouter(tags=["node"])


def not_ready_reasons(facts: ReadinessFacts) -> list[str]:
    reasons = []
    if not facts.member:
        reasons.append("not an active swarm member (not founded or joined yet, or removed)"
                       if facts.upstream == "chain" else "not taking part in rounds")
    if not facts.upstream_reachable:
        reasons.append(f"the {facts.upstream} is unreachable")
    if not facts.he_key:
        reasons.append("no secret HE context for the key epoch of the next round")
    return reasons


@router.get("/v1/health", response_model=Health)
def health(settings: SettingsDep, history: HistoryDep) -> Health:
    """Liveness: the node's process answers."""
    return Health(status="ok", node=settings.name, round=history.round)


@router.get("/v1/ready", response_model=Ready,
            responses={503: {"model": Ready, "description": "not ready, with the reasons"}})
def ready(settings: SettingsDep, node: NodeDep, response: Response) -> Ready:
    """Readiness: a member, its chain (or coordinator) answers, and it holds the HE key."""
    reasons = not_ready_reasons(node.readiness())
    if reasons:
        response.status_code = 503
    return Ready(status="not ready" if reasons else "ready", node=settings.name,
                 reasons=reasons)
