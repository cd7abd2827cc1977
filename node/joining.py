"""The newcomer's side: from nothing but data and an invite to a full swarm member.

The node creates its own Ethereum account, X25519 key pair and TLS key, asks its sponsor
to admit it, and accepts the hand-over only after checking it against the chain: it is
listed as a member, every unwrapped HE context matches its epoch's digest on chain, and
the global weights equal its own decryption of the latest on-chain aggregate.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
from eth_account import Account

from apiary.core.flat import weights_digest
from apiary.core.keywrap import WrappedSecret, unwrap, wrap_context
from apiary.core.tls import TlsFiles, create_key_and_csr
from apiary.node.founding import Identity, write_swarm_file

if TYPE_CHECKING:
    from apiary.node.runtime import NodeRuntime

log = logging.getLogger("apiary.node.join")

APPROVAL_POLL_S = 2.0


class JoinFailed(RuntimeError):
    """The sponsor refused, or its hand-over did not check out against the chain."""


@dataclass
class Joiner:
    runtime: NodeRuntime
    state: str = "idle"
    sponsor: str | None = None
    address: str | None = None
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    _thread: threading.Thread | None = None

    def progress(self) -> dict[str, Any]:
        seconds = None
        if self.started_at is not None:
            seconds = round((self.finished_at or time.time()) - self.started_at, 2)
        return {"state": self.state, "sponsor": self.sponsor, "address": self.address,
                "error": self.error, "seconds": seconds, **self.detail}

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, sponsor: str, invite: str) -> None:
        if self.busy:
            raise RuntimeError("a join is already in progress")
        self.sponsor = sponsor.rstrip("/")
        self.error, self.started_at, self.finished_at = None, time.time(), None
        self._thread = threading.Thread(target=self._run, args=(invite,), name="join",
                                        daemon=True)
        self._thread.start()

    def _run(self, invite: str) -> None:
        try:
            self._join(invite)
            self.state = "member"
        except Exception as exc:  # the join thread reports any failure through /v1/join
            self.state, self.error = "failed", str(exc)
            log.error("node=%s join failed: %s", self.runtime.settings.name, exc)
        finally:
            self.finished_at = time.time()

    def _join(self, invite: str) -> None:
        runtime = self.runtime
        settings = runtime.settings
        self.state = "generating keys"
        identity = runtime.identity or Identity.create(settings.name, Account.create().key.hex())
        identity.save(settings.state_dir)
        runtime.identity = identity
        self.address = identity.address
        tls_key, csr = create_key_and_csr(settings.name)

        self.state = "requesting admission"
        body = {"invite": invite, "address": identity.address,
                "x25519_public_key": identity.x25519_public, "endpoint": settings.endpoint,
                "csr": csr.decode()}
        while True:
            reply = httpx.post(f"{self.sponsor}/v1/members", json=body, timeout=120)
            if reply.status_code == 202:
                self.state = "awaiting approval"
                self.detail = {k: reply.json().get(k) for k in ("approvals", "needed")}
                time.sleep(APPROVAL_POLL_S)
                continue
            if reply.status_code != 200:
                raise JoinFailed(f"the sponsor refused ({reply.status_code}): "
                                 f"{_detail(reply)}")
            break
        handover = reply.json()

        self.state = "verifying"
        contract_address, rpc_url = handover["contract"], handover["rpc_url"]
        write_swarm_file(settings.state_dir, contract_address, rpc_url)
        runtime.tls = TlsFiles(handover["tls"]["ca_cert"].encode(), tls_key,
                               handover["tls"]["cert"].encode())
        runtime.tls.save(settings.state_dir / "tls")
        contract = runtime.connect(contract_address, rpc_url, identity.private_key)
        if not contract.member(identity.address).active:
            raise JoinFailed("the chain does not list this node as a member")
        for item in handover["keys"]:
            epoch = int(item["epoch"])
            _, digest = contract.key_epoch(epoch)
            secret = unwrap(WrappedSecret.from_json(item["wrapped"]),
                            bytes.fromhex(identity.x25519_private),
                            wrap_context(contract.address, identity.address, epoch))
            runtime.keys.put(epoch, secret, digest)
        weights = np.load(io.BytesIO(base64.b64decode(handover["weights"])), allow_pickle=False)
        round_number = int(handover["round"])
        runtime.activate()
        if round_number > 0:
            assert runtime.driver is not None
            on_chain = runtime.driver.fetch_aggregate(round_number, runtime.trainer.param_count)
            if weights_digest(on_chain.weights) != weights_digest(weights):
                raise JoinFailed(f"the weights handed over differ from round {round_number}'s "
                                 "aggregate on chain")
        runtime.state.save(weights, round_number, weights_digest(weights))
        runtime.weights = weights
        log.info("node=%s joined the swarm as %s at round %d", settings.name, identity.address,
                 round_number)
        runtime.ready.set()


def _detail(reply: httpx.Response) -> str:
    try:
        return str(reply.json().get("detail"))
    except ValueError:
        return reply.text[:200]
