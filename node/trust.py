"""Whom a member's gRPC trusts: `apiary.chain.trust`, shared with the coordinator."""

from __future__ import annotations

from apiary.chain.trust import TTL_S, MemberTrust

__all__ = ["TTL_S", "MemberTrust"]
