"""What a round yields, whichever way (chain or coordinator) it was aggregated."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from apiary.core.errors import ApiaryError


class RoundFailed(ApiaryError, RuntimeError):
    """A round could not be completed (timeout, bad aggregate, nobody reachable)."""


class RoundAbandoned(RoundFailed):
    """The round closed on chain without an aggregate; every model stays as it was."""


class NotAMember(RoundFailed):
    """The chain no longer lists this node as an active member."""


@dataclass
class RoundOutcome:
    round: int
    weights: np.ndarray
    weight_sum: int
    contributors: list[str]
    aggregate_digests: list[str]
    seconds: dict[str, float] = field(default_factory=dict)
    train_loss: float | None = None
    committed: bool = True
    relay: bool = False
    aggregate_transactions: list[str] = field(default_factory=list)
    """The hashes of the transactions that put the aggregate on chain (swarm mode; when
    the node summed the blocks itself, the one that finalized the round)."""
    summed_locally: bool = False
    """The node computed the aggregate from the blocks it received and checked it against
    the chain's digests, rather than reading it from the chain's logs."""
