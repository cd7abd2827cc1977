"""The one settings object: environment variables (``APIARY_*``) overridden by CLI flags."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from apiary.core.errors import ConfigError
from apiary.core.logs import LogFormat, LogLevel
from apiary.core.training import DEFAULT_TRAINING

ServerOptimizerName = Literal["fedavg", "fedavgm", "fedadam", "fedyogi"]
"""`apiary.core.server_optim.SERVER_OPTIMIZERS`, as a type the settings validate."""

ENV_PREFIX = "APIARY_"
FILE_SUFFIX = "_FILE"
OTHER_VARIABLES = frozenset({"APIARY_DEBUG", "APIARY_IMAGE"})
"""``APIARY_*`` variables that are no setting: the CLI's ``--debug`` and the image
docker-compose.yml runs."""


class ApiarySettings(BaseSettings):
    """Settings read from ``APIARY_*`` variables. A variable no settings class reads (a
    typo such as ``APIARY_ADMN_TOKEN``) is refused at :meth:`load`, naming the closest one."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        """Environment first, then every override that is not None (CLI flags). A value
        that does not validate is a :class:`ConfigError` naming the setting and its variable."""
        check_environment(os.environ)
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            return cls(**{**read_variable_files(cls, os.environ), **given})
        except ValidationError as exc:
            raise ConfigError("; ".join(_describe(error) for error in exc.errors())) from None
        except SettingsError as exc:
            raise ConfigError(str(exc)) from None


def known_variables() -> frozenset[str]:
    """Every variable a settings class reads, and the CLI's own."""
    known = set(OTHER_VARIABLES)
    pending: list[type[ApiarySettings]] = [ApiarySettings]
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        prefix = str(cls.model_config.get("env_prefix", ""))
        known.update(f"{prefix}{name}{suffix}".upper() for name in cls.model_fields
                     for suffix in ("", FILE_SUFFIX))
    return frozenset(known)


def read_variable_files(cls: type[ApiarySettings], environ: Mapping[str, str]) -> dict[str, str]:
    """Each setting given as ``APIARY_<NAME>_FILE=path`` (a Docker or Kubernetes secret, say):
    the file's content without its trailing newline. Keeps secrets off command lines and
    out of the environment; setting both the variable and its ``_FILE`` is refused."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    values = {}
    for name in cls.model_fields:
        variable = f"{prefix}{name}".upper()
        path = environ.get(variable + FILE_SUFFIX)
        if path is None:
            continue
        if variable in environ:
            raise ConfigError(f"both {variable} and {variable}{FILE_SUFFIX} are set: "
                              "unset one of them")
        try:
            values[name] = Path(path).read_text().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read {variable}{FILE_SUFFIX}={path} "
                              f"({exc.__class__.__name__}: {exc}); point it at a readable "
                              "file holding the value") from None
    return values


def check_environment(environ: Mapping[str, str]) -> None:
    """ConfigError naming each ``APIARY_*`` variable no setting reads, with the closest
    known name: a mistyped variable must not leave its setting silently at the default."""
    known = known_variables()
    unknown = sorted(name for name in environ
                     if name.upper().startswith(ENV_PREFIX) and name.upper() not in known)
    if not unknown:
        return
    described = []
    names = {variable[len(ENV_PREFIX):]: variable for variable in known
             if variable.startswith(ENV_PREFIX)}  # the common prefix says nothing
    for name in unknown:
        close = difflib.get_close_matches(name.upper()[len(ENV_PREFIX):], names, n=1, cutoff=0.6)
        described.append(f"{name} (did you mean {names[close[0]]}?)" if close else name)
    many = len(unknown) > 1
    raise ConfigError(f"unknown environment variable{'s' if many else ''} "
                      f"{', '.join(described)}: no setting reads {'them' if many else 'it'}; "
                      "correct the name or unset it")


def _describe(error: Any) -> str:
    field = ".".join(str(part) for part in error["loc"]) or "settings"
    variable = f"{ENV_PREFIX}{field}".upper()
    message = str(error["msg"])
    return (f"invalid setting {field}={error['input']!r} (from a flag or {variable}): "
            f"{message[:1].lower()}{message[1:]}")


class ChainSettings(ApiarySettings):
    """How to reach (or start) the Ethereum devnet."""

    rpc_url: str = Field("http://127.0.0.1:8545", description="JSON-RPC endpoint of the chain")
    devnet_host: str = Field("127.0.0.1", description="address anvil listens on")
    devnet_port: int = Field(8545, ge=1, le=65535, description="port anvil listens on")
    devnet_accounts: int = Field(20, description="funded accounts anvil creates")
    block_gas_limit: int = Field(
        1_000_000_000, description="block gas limit; one aggregate of 10 nodes needs ~55M"
    )
    anvil_bin: Path | None = Field(None, description="anvil executable (default: node_modules)")
    devnet_state: Path | None = Field(
        None, description="file the devnet keeps the chain in across restarts, written every "
        "few seconds and on exit (default: memory only; `apiary devnet` uses devnet/state.json)"
    )
    devnet_keep_blocks: int = Field(
        300, ge=0, description="blocks whose transactions, receipts and logs the devnet keeps "
        "(anvil --transaction-block-keeper; ~40 rounds of 3 nodes): memory and the state file "
        "stay bounded, logs of older blocks are gone (0: keep everything)"
    )
    devnet_keep_states: int = Field(
        64, ge=0, description="past block states the devnet keeps in memory, none on disk "
        "(anvil --prune-history; 0: keep every state)"
    )


class LogSettings(ApiarySettings):
    """How a service logs (the node, the coordinator)."""

    log_level: LogLevel = Field("info", description="debug, info, warning or error")
    log_format: LogFormat = Field(
        "text", description="text, or json: one object per line with time, level, logger, "
        "message and the node, round and peer it concerns")


class NodeSettings(LogSettings):
    """One hospital node: its data, identity, ports, swarm and training parameters."""

    name: str = Field("hospital", description="this hospital's name in logs and tables")
    data: Path = Field(Path("data/hospital.npz"), description="private shard (.npz or .csv)")
    heldout: Path | None = Field(None, description="optional shared held-out test set")
    task: str | None = Field(
        None, description="the swarm's task: a built-in (heart, fashion), package.module:name, "
        "or path/to/file.py[:name] (default: heart, or the task of --model)")
    model: str | None = Field(
        None, description="short for a built-in task: mlp (--task heart) or cnn (--task fashion)")
    state_dir: Path = Field(Path("state"), description="keys, global weights, round history")
    mode: str = Field("swarm", description="swarm (on chain) or federated (coordinator)")
    api_host: str = Field("127.0.0.1", description="admin API listen address")
    api_port: int = Field(8000, ge=0, le=65535, description="admin API port")
    admin_token: str | None = Field(
        None, description="bearer token for admin API calls (required, no default: a random "
        "secret of at least 16 characters, e.g. `openssl rand -hex 24`)")
    api_max_body_bytes: int = Field(
        1 << 20, ge=64 << 10, le=64 << 20, description="largest admin API request body in "
        "bytes (a longer one is refused with 413); the largest legitimate one, a sealed HE "
        "key, is about 530 KB")
    grpc_host: str = Field("127.0.0.1", description="peer gRPC listen address")
    grpc_port: int = Field(50051, ge=0, le=65535, description="peer gRPC port")
    advertise: str | None = Field(None, description="gRPC endpoint peers use (host:port)")
    rpc_url: str | None = Field(
        None, description="chain JSON-RPC endpoint (default: from the state dir, else :8545)"
    )
    contract: str | None = Field(
        None, description="SwarmLearning contract address (default: from the state dir)"
    )
    chain_wait_s: float = Field(
        60.0, gt=0, allow_inf_nan=False,
        description="seconds a member's start-up waits for the chain to answer, then gives up")
    private_key: str | None = Field(None, description="this node's Ethereum private key")
    he_context: Path | None = Field(
        None, description="the swarm's secret HE context file (default: in the state dir)"
    )
    coordinator: str | None = Field(None, description="coordinator host:port (federated)")
    coordinator_cert: Path = Field(
        Path("swarm/coordinator.pem"), description="the coordinator's TLS certificate "
        "(federated; the coordinator writes it as coordinator.pem next to swarm.json)"
    )
    join: str | None = Field(None, description="join the swarm through this sponsor's API URL")
    invite: str | None = Field(None, description="the sponsor's invite token (with --join)")
    join_funding_eth: float = Field(
        1.0, description="ETH a sponsor sends a newcomer for its gas (devnets)"
    )
    rounds: int = Field(0, ge=0, description="rounds to take part in, then exit (0: forever)")
    round_interval_s: float = Field(
        0.0, ge=0, le=86400, allow_inf_nan=False,
        description="seconds to rest after each round before the next (0: back to back); "
        "the same on every member, and well inside the swarm's enrolment window")
    epochs: int = Field(DEFAULT_TRAINING.epochs, ge=1, description="local epochs per round")
    lr: float = Field(DEFAULT_TRAINING.lr, gt=0, description="learning rate (Adam)")
    batch_size: int = Field(DEFAULT_TRAINING.batch_size, ge=1, description="mini-batch size")
    seed: int = Field(
        DEFAULT_TRAINING.seed, description="swarm seed: initial model and per-round shuffling"
    )
    server_optimizer: ServerOptimizerName = Field(
        DEFAULT_TRAINING.server_optimizer,  # type: ignore[arg-type]
        description="step every node applies to the decrypted average: fedavg (plain "
        "averaging), fedavgm, fedadam or fedyogi")
    server_lr: float | None = Field(
        DEFAULT_TRAINING.server_lr, gt=0, allow_inf_nan=False,
        description="server learning rate (default 1 for fedavg and fedavgm, 0.01 for "
        "fedadam and fedyogi)")
    server_momentum: float = Field(
        DEFAULT_TRAINING.server_momentum, ge=0, lt=1, allow_inf_nan=False,
        description="fedavgm: server momentum")
    server_beta1: float = Field(
        DEFAULT_TRAINING.server_beta1, ge=0, lt=1, allow_inf_nan=False,
        description="fedadam, fedyogi: first-moment decay")
    server_beta2: float = Field(
        DEFAULT_TRAINING.server_beta2, ge=0, lt=1, allow_inf_nan=False,
        description="fedadam, fedyogi: second-moment decay")
    server_tau: float = Field(
        DEFAULT_TRAINING.server_tau, gt=0, allow_inf_nan=False,
        description="fedadam, fedyogi: adaptivity (added to the root of the second moment)")
    fedprox_mu: float = Field(
        DEFAULT_TRAINING.fedprox_mu, ge=0, allow_inf_nan=False,
        description="FedProx: weight mu of the proximal term mu/2·|w − w_global|² in the local "
        "loss (0: none)")
    relay_takeover_s: float = Field(
        5.0, description="extra seconds each backup relay waits before taking over"
    )
    round_timeout_s: float = Field(600.0, description="give up on a round after this long")
    guard_max_weight: float = Field(
        1e3, gt=0, allow_inf_nan=False,
        description="reject an aggregate with a weight of larger magnitude (model kept)")
    guard_change_ratio: float = Field(
        2.0, gt=0, allow_inf_nan=False,
        description="largest change an aggregate may make to the model, in multiples of "
        "the model's norm (or of recent changes: --guard-change-factor)")
    guard_change_factor: float = Field(
        5.0, gt=0, allow_inf_nan=False,
        description="largest change an aggregate may make, in multiples of the largest "
        "change of the last 5 adopted rounds (whichever bound allows more)")

    @property
    def endpoint(self) -> str:
        return self.advertise or f"{self.grpc_host}:{self.grpc_port}"


class CoordinatorSettings(LogSettings):
    """The federated-mode coordinator: where it listens, what it aggregates, for whom."""

    coordinator_host: str = Field("127.0.0.1", description="address the coordinator listens on")
    coordinator_port: int = Field(50060, ge=0, le=65535, description="gRPC port of the coordinator")
    coordinator_metrics_port: int = Field(
        9110, ge=0, le=65535, description="port of the coordinator's Prometheus /metrics, on "
        "the coordinator's address (0: none; not 9100, node_exporter's usual port)")
    coordinator_swarm: Path = Field(
        Path("swarm"), description="the swarm directory apiary found wrote (swarm.json, the "
        "public HE context); the coordinator publishes coordinator.pem there"
    )
    coordinator_state: Path = Field(
        Path("coordinator-state"), description="the coordinator's TLS key and its rounds"
    )
    coordinator_context: Path | None = Field(
        None, description="file holding the public HE context, never the secret one "
        "(default: he-public.ctx in the swarm directory)"
    )
    rpc_url: str | None = Field(
        None, description="chain JSON-RPC endpoint (default: swarm.json's)"
    )
    param_count: int | None = Field(
        None, ge=1, description="parameters in the flat model vector (checked against the "
        "contract's, which is the default)"
    )
    min_peers: int = Field(2, ge=1, description="fewest updates a round may close with")
    round_deadline_s: float = Field(
        60.0,
        gt=0,
        description="seconds from a round's first update until it closes without every member "
        "(it still needs min_peers updates)",
    )


class FoundingSettings(ApiarySettings):
    """`apiary found`: the deployer's side of the founding ceremony. It drives the founders'
    nodes over their admin APIs, deploys the contract and admits them; it holds no key of
    theirs and writes none."""

    rpc_url: str = Field("http://127.0.0.1:8545", description="chain JSON-RPC endpoint")
    funding_key: str | None = Field(
        None, description="the deployer's Ethereum key: deploys the contract (whose admin it "
        "is until handed on) and funds the members' accounts (default: anvil's account 0)"
    )
    founding_members: str = Field(
        "", description="comma-separated name=URL of each founding node's admin API, e.g. "
        "cleveland=http://cleveland:8000; the first creates the swarm's HE key"
    )
    admin_token: str | None = Field(
        None, description="bearer token of the founding nodes' admin APIs (required)"
    )
    admin: str | None = Field(
        None, description="hand the contract's admin role to this address, or to the founding "
        "member of this name (whose node then accepts it)"
    )
    swarm_dir: Path = Field(
        Path("swarm"), description="where swarm.json and the public HE context are written"
    )
    model: str = Field(DEFAULT_TRAINING.model, description="model from the registry: mlp or cnn")
    dataset: str = Field(
        "heart", description="'heart' (bundled data) or a shard file: sizes the contract"
    )
    min_peers: int = Field(2, ge=1, description="fewest members a round may close with")
    enrol_window_s: int = Field(
        20, ge=1, le=86400,
        description="seconds after a round opens that every member has to enrol (on chain)",
    )
    commit_window_s: int = Field(
        30, ge=1, le=86400,
        description="seconds the round's participants have to commit before the absent ones "
        "are dropped (on chain)",
    )
    membership: str = Field("admin", description="who admits members: admin or majority")
    member_funding_eth: float = Field(
        10.0, ge=0, description="ETH the deployer sends each member's account for gas"
    )
    chain_wait_s: float = Field(60.0, gt=0, description="seconds to wait for the chain to answer")
    node_wait_s: float = Field(
        120.0, gt=0, description="seconds to wait for the founding nodes' admin APIs to answer"
    )

    @property
    def member_urls(self) -> dict[str, str]:
        """``{name: admin API URL}`` in the order given; the first creates the HE key."""
        members: dict[str, str] = {}
        for item in filter(None, (i.strip() for i in self.founding_members.split(","))):
            name, sep, url = item.partition("=")
            name, url = name.strip(), url.strip().rstrip("/")
            if not sep or not name or not url.startswith(("http://", "https://")):
                raise ValueError(f"founding member {item!r}: expected name=http://host:port "
                                 "(the node's admin API)")
            if name in members:
                raise ValueError(f"founding member {name!r} is listed twice")
            members[name] = url
        return members


class SampleDataSettings(ApiarySettings):
    """`apiary sample-data`: one hospital's shard of the bundled UCI Heart Disease data."""

    hospital: str = Field("cleveland", description="cleveland, hungary, switzerland or va")
    data: Path = Field(Path("data/hospital.npz"), description="shard file to write (.npz or .csv)")
    seed: int = Field(0, description="seed of the train/test split")


class AdminClientSettings(ApiarySettings):
    """`apiary admin`: which node's admin API to call, with which token."""

    node_url: str = Field("http://127.0.0.1:8000", pattern=r"^https?://",
                          description="the node's admin API URL")
    admin_token: str | None = Field(
        None, description="the node's admin token (or APIARY_ADMIN_TOKEN_FILE: a file holding it)")
    request_timeout_s: float = Field(30.0, gt=0, description="seconds to wait for an answer")
    invite: str | None = Field(None, description="a sponsor's invite, for `apiary admin join "
                               "start` (or APIARY_INVITE_FILE: a file holding it)")
