"""Asking a sponsor again for the hand-over of an admission that already happened.

A join can fail after the sponsor answered: the answer was lost, the chain did not answer
while the newcomer checked it, the node was restarted. The newcomer is a member on chain
by then and its invite is spent, so it cannot be admitted again; it asks for the hand-over
once more instead (``POST /v1/members/{address}/handover``), proving two things:

* it holds the Ethereum key of the member's address — an EIP-191 signature over this
  request, bound to the address, to the invite it was admitted with and to a time within
  `MAX_SKEW_S` (so a signature made for one sponsor's invite is worth nothing elsewhere);
* it was admitted with that invite (the sponsor's invite book names the address).

The sponsor then seals the swarm's HE key to the X25519 key the chain registers for that
member — never to one the request names — so even a replayed request yields a key only the
member can open.
"""

from __future__ import annotations

import hashlib
import math
import time

from eth_account import Account
from eth_account.messages import encode_defunct
from eth_keys.exceptions import BadSignature
from eth_utils.exceptions import ValidationError
from pydantic import BaseModel, Field

DOMAIN = "apiary.v1.HandoverRequest"
MAX_SKEW_S = 300.0


class HandoverRequest(BaseModel):
    """A member's request for its hand-over again (`POST /v1/members/{address}/handover`)."""

    invite: str = Field(min_length=8, max_length=200,
                        description="the invite this member was admitted with")
    issued_at: float = Field(allow_inf_nan=False, strict=True,
                             description="when it was signed, Unix seconds")
    signature: str = Field(pattern=r"^(0x)?[0-9a-fA-F]{130}$",
                           description="EIP-191 signature of the member's Ethereum key over "
                                       "handover_message(address, invite, issued_at)")


def handover_message(address: str, invite: str, issued_at: float) -> str:
    """What the member signs: the invite enters as its SHA-256, as the sponsor keeps it."""
    digest = hashlib.sha256(invite.encode()).hexdigest()
    return f"{DOMAIN}\naddress: {address.lower()}\ninvite: {digest}\nissued_at: {issued_at!r}"


def sign_handover_request(private_key: str, invite: str,
                          now: float | None = None) -> tuple[str, HandoverRequest]:
    """The member's address and its signed request."""
    account = Account.from_key(private_key)
    issued_at = round(time.time() if now is None else now, 3)
    signed = Account.sign_message(
        encode_defunct(text=handover_message(account.address, invite, issued_at)), account.key)
    return account.address, HandoverRequest(invite=invite, issued_at=issued_at,
                                            signature=bytes(signed.signature).hex())


def signer_problem(address: str, request: HandoverRequest,
                   now: float | None = None) -> str | None:
    """Why `request` does not prove it comes from `address`'s key now; None if it does."""
    now = time.time() if now is None else now
    if not math.isfinite(request.issued_at) or abs(now - request.issued_at) > MAX_SKEW_S:
        return (f"the request was signed at {request.issued_at:.0f}, more than "
                f"{MAX_SKEW_S:.0f} s from this sponsor's clock: sign it again now")
    message = encode_defunct(text=handover_message(address, request.invite, request.issued_at))
    try:
        recovered = Account.recover_message(message,
                                            signature=bytes.fromhex(
                                                request.signature.removeprefix("0x")))
    except (ValueError, TypeError, BadSignature, ValidationError):
        return "the signature is malformed"
    if recovered.lower() != address.lower():
        return f"the request is not signed by {address}'s key"
    return None
