"""What the routes depend on. Each collaborator is read from ``app.state``, where
:func:`~apiary.node.api.app.create_app` puts it, so a test can replace any of them through
``app.dependency_overrides``."""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Protocol

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from apiary.core.settings import NodeSettings
from apiary.node.founding import (
    FoundingStatus,
    KeyDelivery,
    PublicContext,
    SwarmAssignment,
    TrainingInfo,
    WrappedKeys,
)
from apiary.node.identity import PublicIdentity
from apiary.node.onboarding import (
    AdminRole,
    Approval,
    Handover,
    JoinRequest,
    Pending,
    Removal,
    Rotation,
)
from apiary.node.ports import NodeView
from apiary.node.resumption import HandoverRequest
from apiary.node.schemas import JoinProgress


class History(Protocol):
    """The node's round and round history (NodeState)."""

    @property
    def round(self) -> int: ...
    def snapshot(self) -> dict[str, Any]: ...


class InviteIssuer(Protocol):
    def create(self, ttl_s: float) -> tuple[str, float]: ...


class Sponsoring(Protocol):
    """Admits, approves and removes members (onboarding.Sponsor); raises Refused."""

    def admit(self, request: JoinRequest) -> Handover | Pending: ...
    def resume(self, address: str, request: HandoverRequest) -> Handover: ...
    def approve(self, address: str) -> Approval: ...
    def remove(self, address: str) -> Removal: ...
    def rotate(self) -> Rotation: ...
    def admin_role(self) -> AdminRole: ...
    def transfer_admin(self, address: str) -> AdminRole: ...
    def accept_admin(self) -> AdminRole: ...


class Founding(Protocol):
    """This node's part in founding a swarm (founding.FoundingCeremony); raises Refused."""

    def public_identity(self) -> PublicIdentity: ...
    def training_info(self) -> TrainingInfo: ...
    def status(self) -> FoundingStatus: ...
    def create_key(self) -> PublicContext: ...
    def join_swarm(self, assignment: SwarmAssignment) -> FoundingStatus: ...
    def wrap_keys(self) -> WrappedKeys: ...
    def accept_key(self, delivery: KeyDelivery) -> FoundingStatus: ...


class JoinControl(Protocol):
    """This node's own join through a sponsor (joining.Joiner)."""

    @property
    def busy(self) -> bool: ...
    def start(self, sponsor: str, invite: str) -> None: ...
    def progress(self) -> JoinProgress: ...


def get_settings(request: Request) -> NodeSettings:
    settings: NodeSettings = request.app.state.settings
    return settings


def get_node(request: Request) -> NodeView:
    node: NodeView = request.app.state.node
    return node


def get_history(request: Request) -> History:
    history: History = request.app.state.history
    return history


def get_invites(request: Request) -> InviteIssuer:
    invites: InviteIssuer = request.app.state.invites
    return invites


def get_sponsor(request: Request) -> Sponsoring:
    sponsor: Sponsoring = request.app.state.sponsor
    return sponsor


def get_founding(request: Request) -> Founding:
    founding: Founding = request.app.state.founding
    return founding


def get_joiner(request: Request) -> JoinControl | None:
    """None on a node that does not join (federated mode)."""
    joiner: JoinControl | None = request.app.state.joiner
    return joiner


SettingsDep = Annotated[NodeSettings, Depends(get_settings)]
NodeDep = Annotated[NodeView, Depends(get_node)]
HistoryDep = Annotated[History, Depends(get_history)]
InvitesDep = Annotated[InviteIssuer, Depends(get_invites)]
SponsorDep = Annotated[Sponsoring, Depends(get_sponsor)]
JoinerDep = Annotated[JoinControl | None, Depends(get_joiner)]
FoundingDep = Annotated[Founding, Depends(get_founding)]

bearer = HTTPBearer(auto_error=False)


def require_admin(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """``Authorization: Bearer <admin token>``, compared in constant time."""
    if credentials is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing bearer token",
                            headers={"WWW-Authenticate": "Bearer"})
    expected = settings.admin_token
    if not expected or not secrets.compare_digest(credentials.credentials.encode(),
                                                  expected.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong bearer token",
                            headers={"WWW-Authenticate": "Bearer"})
