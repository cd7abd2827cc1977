"""Fashion-MNIST split across hospitals with a Dirichlet label skew, one :class:`Shard` each.

Provenance
----------
Xiao, Rasul & Vollgraf (2017), *Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
Learning Algorithms*, arXiv:1708.07747; © 2017 Zalando SE, MIT licence. Read offline from the
Debian package ``dataset-fashion-mnist`` (``make deps`` installs it), which ships the four
original gzip-compressed IDX files under :data:`FASHION_DIR`.

Split
-----
* The 60,000 training and 10,000 test images of the original files are pooled and a
  class-balanced subsample of ``images`` is drawn (seeded): it keeps a three-seed comparison
  of real node processes on a 2-core machine within minutes.
* Label skew as in NIID-Bench (Li et al., ICDE 2022) "distribution-based label imbalance": for
  every class, the shares of the hospitals are drawn from Dirichlet(α·1); smaller α, more skew
  (and unequal hospital sizes). Draws are repeated until every hospital holds at least
  ``min_per_hospital`` images.
* Each hospital splits its own images into train and test, stratified by label (the heart
  loader's :func:`~apiary.core.data.heart.stratified_split`), so its test split follows its own
  label mix.
* Pixels are scaled to [0, 1] and standardised with Fashion-MNIST's published constants
  (mean 0.2860, std 0.3530): no statistic of anyone's data needs to be shared.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import numpy as np

from apiary.core.data.heart import stratified_split
from apiary.core.data.shards import Shard
from apiary.core.errors import InvalidInput

__all__ = [
    "CLASSES",
    "FASHION_DIR",
    "dirichlet_split",
    "fashion_hospitals",
    "label_skew",
    "load_fashion_shards",
    "read_idx",
]

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES: tuple[str, ...] = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                            "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_MEAN, _STD = 0.2860, 0.3530
_IDX_DTYPES = {0x08: np.uint8}


def fashion_hospitals(count: int = 5) -> tuple[str, ...]:
    """Hospital names ``site1 … siteN``."""
    if count < 2:
        raise InvalidInput(f"need at least 2 hospitals, got {count}")
    return tuple(f"site{i}" for i in range(1, count + 1))


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (gzip-compressed when it ends in .gz) as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise InvalidInput(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise InvalidInput(f"{path}: header says {dims}, body has {body.size} values")
    return body.reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}: install the Debian package "
        "dataset-fashion-mnist (`make deps` does it; or `apt-get install dataset-fashion-mnist`)"
    )


@lru_cache(maxsize=2)
def _pooled(root: Path) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for image_stem, label_stem in _FILES.values():
        images.append(read_idx(_find(root, image_stem)))
        labels.append(read_idx(_find(root, label_stem)))
    x, y = np.concatenate(images), np.concatenate(labels).astype(np.int64)
    if x.shape[1:] != (28, 28) or len(x) != len(y):
        raise InvalidInput(f"{root}: unexpected Fashion-MNIST shapes {x.shape}, {y.shape}")
    return x, y


def dirichlet_split(labels: np.ndarray, hospitals: int, alpha: float,
                    rng: np.random.Generator, min_per_hospital: int = 10,
                    attempts: int = 1000) -> list[np.ndarray]:
    """Indices of ``labels`` for each hospital: per class, shares ~ Dirichlet(α·1)."""
    if alpha <= 0:
        raise InvalidInput(f"alpha must be > 0, got {alpha}")
    if hospitals * min_per_hospital > len(labels):
        raise InvalidInput(f"{len(labels)} samples cannot give {hospitals} hospitals "
                           f"{min_per_hospital} each")
    for _ in range(attempts):
        parts: list[list[np.ndarray]] = [[] for _ in range(hospitals)]
        for cls in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet(np.full(hospitals, alpha))
            cuts = np.floor(np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for part, chunk in zip(parts, np.split(idx, cuts), strict=True):
                part.append(chunk)
        split = [rng.permutation(np.concatenate(p)) for p in parts]
        if min(len(s) for s in split) >= min_per_hospital:
            return split
    raise InvalidInput(f"no Dirichlet({alpha}) draw gave every hospital {min_per_hospital} samples "
                       f"in {attempts} attempts; raise alpha or the number of samples")


def label_skew(labels: np.ndarray, parts: list[np.ndarray], classes: int) -> float:
    """Mean total-variation distance between each hospital's label mix and the pooled one
    (0: identical mixes; 1: disjoint)."""
    pooled = np.bincount(labels, minlength=classes) / len(labels)
    distances = []
    for part in parts:
        mix = np.bincount(labels[part], minlength=classes) / max(len(part), 1)
        distances.append(0.5 * float(np.abs(mix - pooled).sum()))
    return float(np.mean(distances))


def _balanced_subsample(y: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    classes = np.unique(y)
    per_class = count // len(classes)
    extra = count - per_class * len(classes)
    chosen = []
    for i, cls in enumerate(classes):
        idx = np.flatnonzero(y == cls)
        chosen.append(rng.choice(idx, size=per_class + (1 if i < extra else 0), replace=False))
    return np.concatenate(chosen)


def _normalise(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float32)[:, None, :, :] / np.float32(255.0)
    return (x - np.float32(_MEAN)) / np.float32(_STD)


def load_fashion_shards(seed: int = 0, alpha: float = 0.5, images: int = 12_500,
                        hospitals: int = 5, train_fraction: float = 0.8,
                        root: Path = FASHION_DIR) -> dict[str, Shard]:
    """One image :class:`Shard` (n, 1, 28, 28) per hospital, keyed ``site1 … siteN``.

    Deterministic given the arguments; a different seed draws other images and skews.
    """
    x_all, y_all = _pooled(Path(root))
    if not 0 < images <= len(y_all):
        raise InvalidInput(f"images must be in [1, {len(y_all)}], got {images}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xFA5]))
    pool = _balanced_subsample(y_all, images, rng)
    names = fashion_hospitals(hospitals)
    parts = dirichlet_split(y_all[pool], hospitals, alpha, rng)
    shards: dict[str, Shard] = {}
    for index, (name, part) in enumerate(zip(names, parts, strict=True)):
        chosen = pool[part]
        y = y_all[chosen]
        split_rng = np.random.default_rng(np.random.SeedSequence([seed, 0xFA5, index]))
        train, test = stratified_split(y, train_fraction, split_rng)
        if len(test) == 0:
            train, test = train[1:], train[:1]
        shards[name] = Shard(
            name=name,
            x_train=_normalise(x_all[chosen[train]]),
            y_train=y[train],
            x_test=_normalise(x_all[chosen[test]]),
            y_test=y[test],
            feature_names=(),
            num_classes=len(CLASSES),
        )
    return shards
