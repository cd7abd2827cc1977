"""What the admin API answers and accepts: one definition for the routes that serve them
and for :class:`apiary.node.client.AdminClient`, which reads them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

MAX_INVITE_TTL_S = 30 * 86400

JoinState = Literal["idle", "requesting admission", "awaiting approval",
                    "verifying", "member", "failed"]


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
    aggregate_transactions: list[str] = Field(
        default_factory=list, description="hashes of the transactions that put the "
        "aggregate on chain")


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


class Health(BaseModel):
    status: str
    node: str
    round: int


class Ready(BaseModel):
    status: Literal["ready", "not ready"]
    node: str
    reasons: list[str] = Field(description="why the node is not ready; empty when it is")


class InviteRequest(BaseModel):
    ttl_s: float = Field(3600.0, gt=0, le=MAX_INVITE_TTL_S, allow_inf_nan=False, strict=True,
                         description="lifetime in seconds (a JSON number)")


class InviteCreated(BaseModel):
    invite: str = Field(description="the token; shown only in this answer")
    expires_at: float
    sponsor: str


class JoinStart(BaseModel):
    sponsor_url: str = Field(pattern=r"^https?://", max_length=2000,
                             description="the sponsor node's admin API URL")
    invite: str = Field(min_length=1, max_length=200)


class JoinProgress(BaseModel):
    """Where a join stands (`GET /v1/join`)."""

    state: JoinState
    sponsor: str | None
    address: str | None
    error: str | None
    seconds: float | None
    approvals: int | None = Field(None, description="approvals the proposal has (majority rule)")
    needed: int | None = Field(None, description="approvals it needs")
    round: int | None = Field(None, description="the round of the model the sponsor handed "
                                                "over, once this node is a member")
