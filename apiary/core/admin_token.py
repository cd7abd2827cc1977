"""The admin API's bearer token: required, and never a placeholder or a short word.

A node used to fall back to a well-known default token, so one started without a token
answered anyone who knew the default. There is no default now: every node, the demo's
included, is given its token explicitly (the demo generates a random one per run).
"""

from __future__ import annotations

from apiary.core.errors import ConfigError

MIN_ADMIN_TOKEN_CHARS = 16
PLACEHOLDER_TOKENS = frozenset({"change-me", "changeme", "change_me", "secret", "token",
                                "admin", "password"})
HOW = ("give it --admin-token TOKEN or APIARY_ADMIN_TOKEN=TOKEN, a random secret of "
       f"at least {MIN_ADMIN_TOKEN_CHARS} characters (e.g. `openssl rand -hex 24`)")


class AdminTokenRefused(ConfigError):
    """No admin token, a placeholder, or one too short to guard an admin API."""


def require_admin_token(token: str | None, *, what: str = "the admin API") -> str:
    """`token` if it may guard `what`; AdminTokenRefused saying what to do otherwise."""
    if not token:
        raise AdminTokenRefused(f"{what} needs an admin token: {HOW}")
    if token.strip().lower() in PLACEHOLDER_TOKENS:
        raise AdminTokenRefused(f"{what} refuses the placeholder admin token {token!r}: {HOW}")
    if len(token) < MIN_ADMIN_TOKEN_CHARS:
        raise AdminTokenRefused(f"{what} refuses an admin token of {len(token)} characters: "
                                f"{HOW}")
    return token
