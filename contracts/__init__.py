"""The SwarmLearning contract: Solidity source, committed artifact and its Python binding."""

from apiary.chain.binding import (
    AggregatedBlock,
    ContractRejected,
    HEParameters,
    MemberInfo,
    RoundInfo,
    SwarmContract,
)

__all__ = [
    "AggregatedBlock",
    "ContractRejected",
    "HEParameters",
    "MemberInfo",
    "RoundInfo",
    "SwarmContract",
]
