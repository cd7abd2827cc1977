"""This node's public identity and its part in founding a swarm.

``GET /v1/identity`` is open: it holds only public halves of the node's keys, which is
what the deployer registers on chain. The ceremony's steps need the admin token; the
order they are called in is in :mod:`apiary.node.founding`.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from apiary.node.api.deps import FoundingDep, require_admin
from apiary.node.founding import (
    FoundingStatus,
    KeyDelivery,
    PublicContext,
    SwarmAssignment,
    TrainingInfo,
    WrappedKeys,
)
from apiary.node.identity import PublicIdentity

router = APIRouter(dependencies=[Depends(require_admin)], tags=["founding"])
open_router = APIRouter(tags=["founding"])


@open_router.get("/v1/identity", response_model=PublicIdentity)
def identity(founding: FoundingDep) -> PublicIdentity:
    """Name, Ethereum address, X25519 public key, gRPC endpoint and TLS certificate: what
    the chain registers for this node. The private keys never leave the node."""
    return founding.public_identity()


@open_router.get("/v1/training", response_model=TrainingInfo)
def training(founding: FoundingDep) -> TrainingInfo:
    """The training configuration this node runs with (its task's name, version,
    architecture and initial-weights digests, and the swarm-wide hyper-parameters) and its
    digest: what the contract records at founding and every member must match."""
    return founding.training_info()


@router.post("/v1/he-key", response_model=PublicContext,
             responses={409: {"description": "this node is in a swarm already"}})
def create_he_key(founding: FoundingDep) -> PublicContext:
    """Create the swarm's HE key on this node (the first founder); the secret stays here.
    Answers the public context and its digest, which the contract is deployed with."""
    return founding.create_key()


@router.get("/v1/swarm", response_model=FoundingStatus)
def swarm_status(founding: FoundingDep) -> FoundingStatus:
    """Whether this node is in a swarm, holds its key, and takes part in rounds."""
    return founding.status()


@router.post("/v1/swarm", response_model=FoundingStatus,
             responses={409: {"description": "another swarm, or the chain lists this node "
                                             "otherwise than GET /v1/identity says"},
                        502: {"description": "the chain or the contract cannot be read"}})
def join_swarm(assignment: SwarmAssignment, founding: FoundingDep) -> FoundingStatus:
    """Tell a founding member its swarm; it checks the chain lists it as it is."""
    return founding.join_swarm(assignment)


@router.post("/v1/he-key/wrapped", response_model=WrappedKeys,
             responses={409: {"description": "no swarm yet, or no HE key of it here"}})
def wrap_he_key(founding: FoundingDep) -> WrappedKeys:
    """The swarm's founding HE key sealed (HPKE) to each other member's X25519 key on
    chain, bound to the contract, the member and epoch 0."""
    return founding.wrap_keys()


@router.post("/v1/he-key/delivery", response_model=FoundingStatus,
             responses={409: {"description": "no swarm yet, or an epoch the chain lacks"},
                        422: {"description": "not sealed to this node, or not the key the "
                                             "chain records"}})
def deliver_he_key(delivery: KeyDelivery, founding: FoundingDep) -> FoundingStatus:
    """Hand this node the swarm's HE key sealed to it; stored only if it opens with this
    node's X25519 key and matches its epoch's digest on chain."""
    return founding.accept_key(delivery)
