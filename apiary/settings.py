"""The one settings object: environment variables (``APIARY_*``) overridden by CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ChainSettings(BaseSettings):
    """How to reach (or start) the Ethereum devnet."""

    model_config = SettingsConfigDict(env_prefix="APIARY_", extra="ignore")

    rpc_url: str = Field("http://127.0.0.1:8545", description="JSON-RPC endpoint of the chain")
    devnet_host: str = Field("127.0.0.1", description="address anvil listens on")
    devnet_port: int = Field(8545, description="port anvil listens on")
    devnet_accounts: int = Field(20, description="funded accounts anvil creates")
    block_gas_limit: int = Field(
        1_000_000_000, description="block gas limit; one aggregate of 10 nodes needs ~55M"
    )
    anvil_bin: Path | None = Field(None, description="anvil executable (default: node_modules)")

    @classmethod
    def load(cls, **overrides: Any) -> ChainSettings:
        """Environment first, then every override that is not None (CLI flags)."""
        return cls(**{k: v for k, v in overrides.items() if v is not None})
