"""Membership: invites, admitting, approving and removing members, and this node's own
join through a sponsor.

``POST /v1/members`` is called by a joining node and authorised by its invite, and
``POST /v1/members/{address}/handover`` by a member's signature and the invite it was
admitted with; every other route here needs the admin token.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response
from pydantic import BaseModel, Field

from apiary.node.api.deps import (
    InvitesDep,
    JoinerDep,
    NodeDep,
    SettingsDep,
    SponsorDep,
    require_admin,
)
from apiary.node.identity import EthAddress
from apiary.node.invites import Refused
from apiary.node.onboarding import (
    AdminRole,
    Approval,
    Handover,
    JoinRequest,
    Pending,
    Removal,
    Rotation,
)
from apiary.node.resumption import HandoverRequest
from apiary.node.schemas import InviteCreated, InviteRequest, JoinProgress, JoinStart

router = APIRouter(dependencies=[Depends(require_admin)], tags=["membership"])
invitee_router = APIRouter(tags=["membership"])

AddressPath = Annotated[EthAddress, Path(description="a member's Ethereum address")]


class AdminTransfer(BaseModel):
    address: EthAddress = Field(description="the account to hand the admin role to")


@router.post("/v1/invites", status_code=201, response_model=InviteCreated,
             responses={409: {"description": "this node is not a swarm member (yet)"}})
def create_invite(request: InviteRequest, settings: SettingsDep, node: NodeDep,
                  invites: InvitesDep) -> InviteCreated:
    """A single-use invite for a new hospital; the token is shown only in this answer.
    Only a swarm member can admit anyone, so a node outside the swarm hands out none."""
    if node.link is None:
        raise Refused(409, "this node is not a swarm member (yet): an invite from it could "
                      "never be honoured; create invites on a member, or found or join the "
                      "swarm first")
    token, expires_at = invites.create(request.ttl_s)
    return InviteCreated(invite=token, expires_at=expires_at, sponsor=settings.name)


@invitee_router.post(
    "/v1/members", response_model=Handover | Pending,
    responses={202: {"model": Pending, "description": "awaiting approval by a majority"},
               403: {"description": "invalid invite"},
               409: {"description": "invite used, or already a member"},
               410: {"description": "invite expired"}},
)
def admit_member(request: JoinRequest, response: Response,
                 sponsor: SponsorDep) -> Handover | Pending:
    """Called by a joining node with its invite: registers it on chain with its X25519 key
    and TLS certificate, then hands over the swarm key wrapped to its X25519 key and the
    global model."""
    answer = sponsor.admit(request)
    if isinstance(answer, Pending):
        response.status_code = 202
    return answer


@invitee_router.post(
    "/v1/members/{address}/handover", response_model=Handover,
    responses={403: {"description": "not signed by the member's key, or not the invite it "
                                    "was admitted with"},
               409: {"description": "not an active member"}},
)
def resume_handover(address: AddressPath, request: HandoverRequest,
                    sponsor: SponsorDep) -> Handover:
    """A member whose join failed after its admission asks for its hand-over again, signed
    with its Ethereum key and with the invite it was admitted with; the HE key is sealed to
    the X25519 key the chain registers for it."""
    return sponsor.resume(address, request)


@router.post("/v1/members/{address}/approval", response_model=Approval)
def approve_member(address: AddressPath, sponsor: SponsorDep) -> Approval:
    """Majority rule: this member approves a proposed newcomer."""
    return sponsor.approve(address)


@router.delete("/v1/members/{address}", response_model=Removal)
def remove_member(address: AddressPath, sponsor: SponsorDep) -> Removal:
    """Deactivate a member on chain and rotate the remaining members to a fresh HE key."""
    return sponsor.remove(address)


@router.post("/v1/keys/rotation", response_model=Rotation)
def rotate_key(sponsor: SponsorDep) -> Rotation:
    """Start a fresh HE key epoch now and deliver it to every member (retry when a member
    is listed under `failed`)."""
    return sponsor.rotate()


@router.get("/v1/admin", response_model=AdminRole)
def admin_role(sponsor: SponsorDep) -> AdminRole:
    """Who holds the contract's admin role, and whom a hand-over was started to."""
    return sponsor.admin_role()


@router.post("/v1/admin/transfer", response_model=AdminRole,
             responses={403: {"description": "this node is not the admin"}})
def transfer_admin(request: AdminTransfer, sponsor: SponsorDep) -> AdminRole:
    """Start handing the admin role to another account; it takes it with
    ``POST /v1/admin/accept`` on its node."""
    return sponsor.transfer_admin(request.address)


@router.post("/v1/admin/accept", response_model=AdminRole,
             responses={409: {"description": "no hand-over to this node was started"}})
def accept_admin(sponsor: SponsorDep) -> AdminRole:
    """Take the admin role handed to this node's account."""
    return sponsor.accept_admin()


@router.post("/v1/join", status_code=202, response_model=JoinProgress,
             responses={404: {"description": "this node does not join"},
                        409: {"description": "already a member, or a join is running"}})
def join(request: JoinStart, node: NodeDep, joiner: JoinerDep) -> JoinProgress:
    """Join a swarm through a sponsor's API with its invite (runs in the background)."""
    if node.link is not None:
        raise Refused(409, "this node is already a swarm member")
    if joiner is None:
        raise Refused(404, "this node does not join")
    if joiner.busy:
        raise Refused(409, "a join is already in progress")
    joiner.start(request.sponsor_url, request.invite)
    return joiner.progress()


@router.get("/v1/join", response_model=JoinProgress,
            responses={404: {"description": "this node does not join"}})
def join_progress(joiner: JoinerDep) -> JoinProgress:
    """Where this node's join stands: idle, requesting admission, awaiting approval,
    verifying, member or failed."""
    if joiner is None:
        raise Refused(404, "this node does not join")
    return joiner.progress()
