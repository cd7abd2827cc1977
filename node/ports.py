"""The seams between a node's parts.

The runtime owns the node's changing state (its link to the swarm, its phase, its round
driver). The admin API, the sponsor and the joiner see only the types below, so none of
them imports the runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from apiary.chain.binding import SwarmContract
from apiary.node.rounds import RoundOutcome
from apiary.node.trust import MemberTrust

Train = Callable[[], tuple[np.ndarray, float, int]]
"""Local training for one round: the new weights, the training loss and the sample count."""


@dataclass(frozen=True)
class SwarmLink:
    """A member's link to its swarm, made when the node is activated."""

    contract: SwarmContract
    """The contract, sending as this node."""
    rpc_url: str
    """The chain endpoint the contract was reached through (handed on to newcomers)."""
    trust: MemberTrust | None
    """This node's gRPC credentials, trusting the active members' certificates on chain;
    None for plaintext."""


class AggregateSource(Protocol):
    def fetch_aggregate(self, round_number: int, param_count: int) -> RoundOutcome: ...


class RoundDriver(AggregateSource, Protocol):
    """Runs rounds against the chain (swarm) or the coordinator (federated)."""

    def current_round(self) -> int: ...
    def last_finalized_round(self) -> int: ...
    def run(self, round_number: int, train: Train, param_count: int) -> RoundOutcome: ...


@dataclass(frozen=True)
class ReadinessFacts:
    """What decides whether a node can take part in rounds now."""

    member: bool
    upstream: str
    """What aggregates its rounds: "chain" or "coordinator"."""
    upstream_reachable: bool
    he_key: bool
    """It holds the secret HE context its next round is encrypted under."""


class NodeView(Protocol):
    """The running node as its admin API reads it."""

    @property
    def phase(self) -> str: ...
    @property
    def link(self) -> SwarmLink | None: ...
    @property
    def param_count(self) -> int: ...
    @property
    def sample_count(self) -> int: ...
    def readiness(self) -> ReadinessFacts: ...
