"""The node's status, its round history and its current global model (admin only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from apiary.node.api.deps import HistoryDep, NodeDep, SettingsDep, require_admin
from apiary.node.schemas import Evaluation, Member, ModelInfo, NodeStatus, RoundEntry, RoundHistory

router = APIRouter(dependencies=[Depends(require_admin)])


def _last(snapshot: dict[str, Any]) -> dict[str, Any] | None:
    history: list[dict[str, Any]] = snapshot["history"]
    return history[-1] if history else None


@router.get("/v1/status", response_model=NodeStatus, tags=["node"])
def node_status(settings: SettingsDep, node: NodeDep, history: HistoryDep) -> NodeStatus:
    """Node, mode, round, members and the last round's metrics."""
    snapshot = history.snapshot()
    link = node.link
    members = ([Member(address=m.address, endpoint=m.endpoint) for m in link.contract.members()]
               if link else [])
    last = _last(snapshot)
    return NodeStatus(
        node=settings.name,
        mode=settings.mode,
        address=link.contract.sender if link else None,
        contract=link.contract.address if link else None,
        phase=node.phase,
        round=snapshot["round"],
        params=node.param_count,
        samples=node.sample_count,
        members=members,
        rejected_rounds=[r["round"] for r in snapshot["history"]
                         if r.get("status") == "rejected"],
        last_metrics=RoundEntry.model_validate(last) if last else None,
    )


@router.get("/v1/rounds", response_model=RoundHistory, tags=["rounds"])
def rounds(settings: SettingsDep, history: HistoryDep) -> RoundHistory:
    """Per-round accuracy, loss, phase timings and on-chain digests."""
    entries = [RoundEntry.model_validate(r) for r in history.snapshot()["history"]]
    return RoundHistory(node=settings.name, rounds=entries)


@router.get("/v1/model", response_model=ModelInfo, tags=["model"])
def model(settings: SettingsDep, node: NodeDep, history: HistoryDep) -> ModelInfo:
    """The current global model's digest and its evaluation."""
    snapshot = history.snapshot()
    last = _last(snapshot)
    return ModelInfo(node=settings.name, round=snapshot["round"], params=node.param_count,
                     weights_digest=snapshot["weights_digest"],
                     evaluation=Evaluation.model_validate(last) if last else None)
