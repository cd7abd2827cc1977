"""The coordinator's rounds on disk, so that a coordinator killed at any instant resumes at
the round it was in, with the aggregates it served and the updates it had acknowledged.

Layout of the state directory::

    rounds.json                 {"contract": …, "round": N, "aggregated": [rounds held]}
    aggregates/round-N.bin      the aggregate's blocks, concatenated
    aggregates/round-N.json     its header (weight sum, contributors, digests)
    pending/ADDRESS.bin         an acknowledged update of the open round

Every file is written atomically (`apiary.core.files`), an update before it is acknowledged
and a closed round's aggregate before ``rounds.json`` moves on, so what is on disk is
always a state the coordinator was in. Whatever does not check out on reading (a digest
mismatch, a stale pending update) is left out with a warning, never trusted.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from apiary.core.coefficients import BLOCK_BYTES, block_digest
from apiary.core.errors import ConfigError
from apiary.core.files import write_atomic, write_json
from apiary.core.transport import ReceivedUpdate
from apiary.wire import apiary_pb2

log = logging.getLogger("apiary.coordinator")

ROUNDS_FILE = "rounds.json"
AGGREGATES_DIR = "aggregates"
PENDING_DIR = "pending"
_LENGTH_BYTES = 4


class StateDirError(ConfigError, ValueError):
    """The coordinator's state directory cannot be used for this swarm."""


@dataclass(frozen=True)
class Aggregate:
    """A closed round: Σ wᵢ·ctᵢ mod q per block, over the contributors in name order."""

    round: int
    weight_sum: int
    contributors: tuple[str, ...]
    blocks: tuple[bytes, ...]
    digests: tuple[bytes, ...]


@dataclass
class SavedRounds:
    """What a restarted coordinator resumes from."""

    round: int = 1
    closed: list[Aggregate] = field(default_factory=list)
    pending: list[ReceivedUpdate] = field(default_factory=list)


class RoundStore:
    """Reads and writes one coordinator's round state in `directory`, for one contract."""

    def __init__(self, directory: Path, contract: str) -> None:
        self.directory = Path(directory)
        self.contract = contract
        self._aggregates = self.directory / AGGREGATES_DIR
        self._pending = self.directory / PENDING_DIR
        try:
            self._aggregates.mkdir(parents=True, exist_ok=True)
            self._pending.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateDirError(f"cannot use {self.directory} as the coordinator's state "
                                f"directory: {exc}") from None

    # ------------------------------------------------------------------ reading

    def load(self) -> SavedRounds:
        """The saved state, or a fresh one (round 1) if the directory holds none."""
        path = self.directory / ROUNDS_FILE
        if not path.exists():
            return SavedRounds()
        try:
            raw = json.loads(path.read_text())
            current, contract = int(raw["round"]), str(raw["contract"])
            held = [int(r) for r in raw.get("aggregated", [])]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StateDirError(f"{path} is unreadable ({exc}); move it away to start the "
                                "coordinator at round 1") from None
        if contract.lower() != self.contract.lower():
            raise StateDirError(
                f"{self.directory} holds the rounds of swarm {contract}, not of {self.contract}: "
                "give this swarm's coordinator its own --coordinator-state directory")
        closed = [a for a in (self._read_aggregate(r) for r in held) if a is not None]
        pending = [u for u in (self._read_pending(p, current)
                               for p in sorted(self._pending.glob("*.bin"))) if u is not None]
        return SavedRounds(current, closed, pending)

    def _read_aggregate(self, round_number: int) -> Aggregate | None:
        meta_path, data_path = self._aggregate_paths(round_number)
        try:
            meta = json.loads(meta_path.read_text())
            data = data_path.read_bytes()
            digests = tuple(bytes.fromhex(d) for d in meta["digests"])
            blocks = tuple(data[i * BLOCK_BYTES:(i + 1) * BLOCK_BYTES]
                           for i in range(len(digests)))
            if len(data) != len(digests) * BLOCK_BYTES or any(
                    block_digest(b) != d for b, d in zip(blocks, digests, strict=True)):
                raise ValueError("its blocks do not match their digests")
            return Aggregate(round_number, int(meta["weight_sum"]),
                             tuple(meta["contributors"]), blocks, digests)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("round %d: the saved aggregate in %s is not usable (%s); it is no "
                        "longer served", round_number, self._aggregates, exc)
            return None

    def _read_pending(self, path: Path, current: int) -> ReceivedUpdate | None:
        try:
            data = path.read_bytes()
            size = int.from_bytes(data[:_LENGTH_BYTES], "big")
            header = apiary_pb2.UpdateHeader.FromString(data[_LENGTH_BYTES:_LENGTH_BYTES + size])
            body = data[_LENGTH_BYTES + size:]
            digests = list(header.block_digests)
            blocks = [body[i * BLOCK_BYTES:(i + 1) * BLOCK_BYTES] for i in range(len(digests))]
            if len(body) != len(digests) * BLOCK_BYTES or any(
                    block_digest(b) != d for b, d in zip(blocks, digests, strict=True)):
                raise ValueError("its blocks do not match their digests")
        except (OSError, ValueError) as exc:
            log.warning("the saved update %s is not usable (%s); its sender pushes again",
                        path.name, exc)
            path.unlink(missing_ok=True)
            return None
        if header.round != current:
            path.unlink(missing_ok=True)
            return None
        return ReceivedUpdate(header=header, blocks=blocks)

    # ------------------------------------------------------------------ writing

    def save_pending(self, update: ReceivedUpdate) -> None:
        """Keep an update of the open round; called before it is acknowledged."""
        header = update.header.SerializeToString()
        payload = len(header).to_bytes(_LENGTH_BYTES, "big") + header + b"".join(update.blocks)
        write_atomic(self._pending_path(update.header.sender), payload)

    def save_closed(self, aggregate: Aggregate, held: list[int]) -> None:
        """Record that `aggregate`'s round closed (the next one is open) and that the
        aggregates of `held` rounds are kept; forget the round's updates and older rounds."""
        meta_path, data_path = self._aggregate_paths(aggregate.round)
        write_atomic(data_path, b"".join(aggregate.blocks))
        write_json(meta_path, {"round": aggregate.round, "weight_sum": aggregate.weight_sum,
                               "contributors": list(aggregate.contributors),
                               "digests": [d.hex() for d in aggregate.digests]})
        write_json(self.directory / ROUNDS_FILE, {"contract": self.contract,
                                                  "round": aggregate.round + 1,
                                                  "aggregated": held})
        for path in self._pending.glob("*.bin"):
            path.unlink(missing_ok=True)
        keep = set(held)
        for path in self._aggregates.glob("round-*"):
            with contextlib.suppress(ValueError):
                if int(path.name.split(".")[0].removeprefix("round-")) not in keep:
                    path.unlink(missing_ok=True)

    def _aggregate_paths(self, round_number: int) -> tuple[Path, Path]:
        stem = self._aggregates / f"round-{round_number}"
        return stem.with_suffix(".json"), stem.with_suffix(".bin")

    def _pending_path(self, sender: str) -> Path:
        # The sender is an address the caller's certificate and signature were checked for.
        return self._pending / f"{sender.lower()}.bin"
