"""A node's encrypted update of the round it takes part in, kept on disk until the round ends.

A node encrypts a round once. CKKS encryption is randomised, so a node that restarted and
encrypted again would hold blocks that no longer match the digests it committed, and the
swarm would drop it as withholding; with the blocks kept here it re-masks exactly the same
ciphertext (masks are deterministic) and re-sends what it committed. The file holds only
this hospital's own ciphertext, under the swarm key the same state directory holds anyway.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from apiary.core.files import write_private

log = logging.getLogger("apiary.node.contribution")

DIRECTORY = "round-updates"


@dataclass(frozen=True)
class SavedContribution:
    round: int
    epoch: int
    samples: int
    train_loss: float
    blocks: list[bytes]


@dataclass(frozen=True)
class ContributionStore:
    """One file per round: a JSON header line, then the blocks back to back."""

    state_dir: Path
    contract: str

    @property
    def directory(self) -> Path:
        return self.state_dir / DIRECTORY

    def _path(self, round_number: int) -> Path:
        return self.directory / f"round-{round_number}.update"

    def save(self, contribution: SavedContribution) -> None:
        header = {"contract": self.contract, "round": contribution.round,
                  "epoch": contribution.epoch, "samples": contribution.samples,
                  "train_loss": contribution.train_loss,
                  "lengths": [len(b) for b in contribution.blocks]}
        self.directory.mkdir(parents=True, exist_ok=True)
        payload = json.dumps(header).encode() + b"\n" + b"".join(contribution.blocks)
        write_private(self._path(contribution.round), payload)

    def load(self, round_number: int) -> SavedContribution | None:
        """The update saved for `round_number` of this swarm; None if there is none or it
        is unreadable (the node then encrypts anew)."""
        path = self._path(round_number)
        if not path.exists():
            return None
        try:
            raw = path.read_bytes()
            line, _, body = raw.partition(b"\n")
            header = json.loads(line)
            lengths = [int(n) for n in header["lengths"]]
            if header["contract"] != self.contract or sum(lengths) != len(body):
                raise ValueError("it belongs to another swarm or is truncated")
            blocks, offset = [], 0
            for n in lengths:
                blocks.append(body[offset:offset + n])
                offset += n
            return SavedContribution(int(header["round"]), int(header["epoch"]),
                                     int(header["samples"]), float(header["train_loss"]),
                                     blocks)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the saved update %s: %s", path, exc)
            return None

    def discard_through(self, round_number: int) -> None:
        """Forget the updates of `round_number` and every earlier round."""
        if not self.directory.exists():
            return
        for path in self.directory.glob("round-*.update"):
            try:
                number = int(path.stem.removeprefix("round-"))
            except ValueError:
                continue
            if number <= round_number:
                path.unlink(missing_ok=True)
