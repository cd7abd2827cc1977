"""The node's status, its round history and its current global model (admin only)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from apiary.node.api.deps import HistoryDep, NodeDep, SettingsDep, require_admin

router = APIRouter(dependencies=[Depends(require_admin)])


class RoundEntry(BaseModel):
    """One round as this node saw it (node.state.RoundRecord)."""

    round: int
    contributors: list[str] = Field(description="addresses (swarm) or names (federated)")
    weight_sum: int = Field(description="the samples behind the aggregate")
    accuracy: float | None
    auc: float | None
    loss: float | None
    train_loss: float | None
    heldout_accuracy: float | None
    heldout_auc: float | None
    weights_digest: str
    seconds: dict[str, float] = Field(description="seconds of each phase")
    aggregate_digests: list[str] = Field(default_factory=list)
    committed: bool = Field(True, description="false for a round caught up from the chain")
    relay: bool = Field(False, description="this node relayed the round's aggregate")
    status: Literal["adopted", "rejected"] = Field(
        "adopted", description="rejected: the aggregate failed the model check; the node "
        "kept its model")
    reason: str | None = Field(None, description="why the aggregate was rejected")
    change_norm: float | None = Field(None, description="L2 norm of the model's change")


class RoundHistory(BaseModel):
    node: str
    rounds: list[RoundEntry]


class Member(BaseModel):
    address: str
    endpoint: str


class NodeStatus(BaseModel):
    node: str
    mode: str
    address: str | None = Field(description="this node's account, once a swarm member")
    contract: str | None
    phase: str
    round: int
    params: int
    samples: int
    members: list[Member]
    last_metrics: RoundEntry | None
    rejected_rounds: list[int] = Field(
        default_factory=list, description="rounds whose aggregate failed the model check")


class Evaluation(BaseModel):
    accuracy: float | None
    auc: float | None
    loss: float | None
    heldout_accuracy: float | None
    heldout_auc: float | None


class ModelInfo(BaseModel):
    node: str
    round: int
    params: int
    weights_digest: str | None
    evaluation: Evaluation | None


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
