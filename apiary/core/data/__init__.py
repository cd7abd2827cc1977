"""Hospital data: the :class:`Shard` container and the real UCI Heart Disease hospitals."""

from apiary.core.data.heart import FEATURE_NAMES, HOSPITALS, load_heart_shards, write_heart_shards
from apiary.core.data.shards import Shard

__all__ = ["FEATURE_NAMES", "HOSPITALS", "Shard", "load_heart_shards", "write_heart_shards"]
