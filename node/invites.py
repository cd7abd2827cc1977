"""Single-use invites: the token is shown once; only its SHA-256 is kept, with its expiry."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

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


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class InviteBook:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / INVITES_FILE
        self._lock = threading.Lock()

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
            invite = self._load().get(_digest(token))
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

    def reserve(self, token: str, address: str) -> None:
        """Hold the invite for `address` while its admission awaits approvals."""
        self._update(token, reserved_for=address)

    def mark_used(self, token: str, address: str) -> None:
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
