"""`apiary sample-data`: one hospital's shard of the bundled heart data, written to a file.

It makes a container deployment self-contained: the compose file fills each hospital's
data volume with it. A real hospital mounts its own shard file (.npz or .csv) instead.
"""

from __future__ import annotations

from pathlib import Path

from apiary.core.data.heart import HOSPITALS, load_heart_shards
from apiary.core.data.shards import Shard
from apiary.core.errors import InvalidInput


def write_sample_shard(hospital: str, path: Path, seed: int = 0) -> Shard:
    if hospital not in HOSPITALS:
        raise InvalidInput(f"unknown hospital {hospital!r}; the bundled data has "
                           f"{', '.join(HOSPITALS)}")
    shard = load_heart_shards(seed=seed)[hospital]
    shard.save(path)
    return shard
