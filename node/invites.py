"""Single-use invites: the token is shown once; only its SHA-256 is kept, with its expiry.

An admission holds its invite from before its chain transaction until it is settled
(:meth:`InviteBook.admission`): the check and the reservation are one step under the book's
lock, persisted, so concurrent requests with one invite cannot all pass the check and each
be admitted; the others are refused (409) and change nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from apiary.core.errors import ApiaryError

INVITES_FILE = "invites.json"


class Refused(ApiaryError):
    """A membership request refused (a bad invite, a sponsor that cannot admit, a join that
    cannot start); nothing was changed. `http_status` is the answer's status code."""

    def __init__(self, http_status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status


@dataclass
class Invite:
    digest: str
    created_at: float
    expires_at: float
    used_by: str | None = None
    reserved_for: str | None = None


Outcome = Literal["release", "hold", "use"]


@dataclass
class Admission:
    """One admission's hold on its invite; it settles the invite when it ends."""

    invite: Invite
    held_before: bool
    """The invite was reserved for this address already (approvals awaited, or an earlier
    attempt registered it on chain): a retry of that admission."""
    outcome: Outcome = "release"

    def hold(self) -> None:
        """Keep the invite reserved for this address (proposed or admitted on chain)."""
        if self.outcome == "release":
            self.outcome = "hold"

    def use(self) -> None:
        """The newcomer has its hand-over: the invite is spent."""
        self.outcome = "use"


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class InviteBook:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / INVITES_FILE
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        """Digests of the invites an admission is running with, in this process."""

    def _load(self) -> dict[str, Invite]:
        if not self.path.exists():
            return {}
        return {k: Invite(**v) for k, v in json.loads(self.path.read_text()).items()}

    def _save(self, invites: dict[str, Invite]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({k: asdict(v) for k, v in invites.items()}, indent=1))
        os.replace(tmp, self.path)

    def create(self, ttl_s: float) -> tuple[str, float]:
        """A new token (returned once, never stored) and its expiry time."""
        if ttl_s <= 0:
            raise ValueError("an invite needs a positive lifetime")
        token = secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            invites = self._load()
            invites[_digest(token)] = Invite(_digest(token), now, now + ttl_s)
            self._save(invites)
        return token, now + ttl_s

    def check(self, token: str, address: str) -> Invite:
        """The invite if `address` may use it now; raises Refused otherwise."""
        with self._lock:
            return _usable(self._load().get(_digest(token)), address)

    @contextmanager
    def admission(self, token: str, address: str) -> Iterator[Admission]:
        """Check the invite and reserve it for `address` in one step, persisted, before the
        caller sends any transaction; settle it when the block ends: released (as it was)
        unless the admission called :meth:`Admission.hold` or :meth:`Admission.use`.

        Refused (409) while another admission with the same invite runs, so concurrent
        requests with one invite change nothing but the first.
        """
        digest = _digest(token)
        with self._lock:
            invites = self._load()
            invite = _usable(invites.get(digest), address)
            if digest in self._in_flight:
                raise Refused(409, "an admission with this invite is in progress; wait for "
                                   "its answer (one invite admits one node)")
            admission = Admission(Invite(**asdict(invite)),
                                  held_before=invite.reserved_for is not None)
            invite.reserved_for = address
            self._save(invites)
            self._in_flight.add(digest)
        try:
            yield admission
        finally:
            with self._lock:
                self._in_flight.discard(digest)
                invites = self._load()
                stored = invites[digest]
                if admission.outcome == "use":
                    stored.used_by = address
                elif admission.outcome == "release" and not admission.held_before:
                    stored.reserved_for = None
                self._save(invites)

    def reserve(self, token: str, address: str) -> None:
        """Hold the invite for `address` while its admission awaits approvals."""
        self._update(token, reserved_for=address)

    def admitted_with(self, token: str, address: str) -> bool:
        """Whether `token` is the invite `address` was admitted (or is being admitted) with."""
        with self._lock:
            invite = self._load().get(_digest(token))
        holder = invite and (invite.used_by or invite.reserved_for)
        return bool(holder) and str(holder).lower() == address.lower()

    def spend(self, token: str, address: str) -> None:
        """Mark the invite `address` holds as used (its hand-over was delivered)."""
        self._update(token, used_by=address)

    def _update(self, token: str, **fields: str) -> None:
        with self._lock:
            invites = self._load()
            invite = invites[_digest(token)]
            for name, value in fields.items():
                setattr(invite, name, value)
            self._save(invites)

    def snapshot(self) -> dict[str, dict[str, object]]:
        with self._lock:
            return {k: asdict(v) for k, v in self._load().items()}


def _usable(invite: Invite | None, address: str) -> Invite:
    """`invite` if `address` may use it now; raises Refused otherwise."""
    if invite is None:
        raise Refused(403, "invalid invite")
    holder = invite.used_by or invite.reserved_for
    if holder is not None and holder.lower() != address.lower():
        raise Refused(409, "invite already used")
    if invite.used_by is not None:
        raise Refused(409, "invite already used")
    if time.time() > invite.expires_at and invite.reserved_for is None:
        raise Refused(410, "invite expired")
    return invite
