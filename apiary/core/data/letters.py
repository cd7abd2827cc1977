"""UCI Letter Recognition split across hospitals with a Dirichlet label skew, one Shard each.

Provenance and licence
----------------------
Frey, P. W. & Slate, D. J. (1991), *Letter recognition using Holland-style adaptive
classifiers*, Machine Learning 6(2), 161–182; the UCI Machine Learning Repository's *Letter
Recognition* data set (id 59, https://doi.org/10.24432/C5ZP40), licensed by UCI under CC BY 4.0
(cite the authors above). 20,000 images of the 26 capital letters in 20 fonts, randomly
distorted, each summarised by 16 integer attributes scaled to 0–15 (box position and size,
pixel counts, moments, edge counts).

Read offline from Debian's package ``r-cran-mlbench`` (the R package *mlbench* by F. Leisch and
E. Dimitriadou, GPL-2, which redistributes UCI's table unchanged as the data frame
``LetterRecognition``), file :data:`LETTERS_RDA`, with the project's own reader of R data files
(:mod:`apiary.core.data.rdata`); install it with ``apt-get install --no-install-recommends
r-cran-mlbench``.

Split
-----
As for Fashion-MNIST (:mod:`apiary.core.data.fashion`): per class, the hospitals' shares are
drawn from Dirichlet(α·1) (NIID-Bench's label skew), then each hospital splits its letters into
train and test, stratified by label. Every one of the 20,000 letters is used. The 16 attributes
are mapped from their published 0–15 range to [−1, 1], so no statistic of anyone's data needs
to be shared. With 26 classes a skewed hospital sees few examples of most letters, which makes
training alone weak and joining worth the most of the three data sets.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from apiary.core.data.fashion import dirichlet_split, fashion_hospitals
from apiary.core.data.heart import stratified_split
from apiary.core.data.rdata import rda_data_frame
from apiary.core.data.shards import Shard
from apiary.core.errors import InvalidInput

__all__ = ["FEATURE_NAMES", "LETTERS", "LETTERS_RDA", "load_letter_frame",
           "load_letters_shards"]

LETTERS_RDA = Path("/usr/lib/R/site-library/mlbench/data/LetterRecognition.rda")
LETTERS: tuple[str, ...] = tuple(chr(ord("A") + i) for i in range(26))
#: mlbench's names of UCI's 16 attributes, in UCI's order.
FEATURE_NAMES: tuple[str, ...] = (
    "x.box", "y.box", "width", "high", "onpix", "x.bar", "y.bar", "x2bar", "y2bar", "xybar",
    "x2ybr", "xy2br", "x.ege", "xegvy", "y.ege", "yegvx",
)
_ROWS = 20_000
_SCALE_MAX = 15.0


@lru_cache(maxsize=2)
def load_letter_frame(path: Path = LETTERS_RDA) -> tuple[np.ndarray, np.ndarray]:
    """All 20,000 letters in source order: attributes ``(20000, 16)`` float64 on 0–15 and
    labels 0–25 (A–Z)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"Letter Recognition data not found at {path}: install the Debian package "
            "r-cran-mlbench (`apt-get install --no-install-recommends r-cran-mlbench`)")
    columns = rda_data_frame(path, "LetterRecognition")
    missing = [c for c in ("lettr", *FEATURE_NAMES) if c not in columns]
    if missing:
        raise InvalidInput(f"{path}: LetterRecognition lacks column(s) {missing}")
    if tuple(columns["lettr.levels"]) != LETTERS:
        raise InvalidInput(f"{path}: unexpected letter levels {columns['lettr.levels']}")
    x = np.stack([np.asarray(columns[c], dtype=np.float64) for c in FEATURE_NAMES], axis=1)
    y = np.asarray(columns["lettr"], dtype=np.int64)
    if x.shape != (_ROWS, 16) or y.min() < 0 or x.min() < 0 or x.max() > _SCALE_MAX:
        raise InvalidInput(f"{path}: unexpected Letter Recognition table {x.shape}")
    return x, y


def load_letters_shards(seed: int = 0, alpha: float = 0.5, hospitals: int = 5,
                        train_fraction: float = 0.8, path: Path = LETTERS_RDA,
                        ) -> dict[str, Shard]:
    """One tabular :class:`Shard` (n, 16) per hospital, keyed ``site1 … siteN``, 26 classes.

    Deterministic given the arguments; a different seed draws other skews.
    """
    if not 0.0 < train_fraction < 1.0:
        raise InvalidInput(f"train_fraction must be in (0, 1), got {train_fraction}")
    names = fashion_hospitals(hospitals)
    x_all, y_all = load_letter_frame(Path(path))
    x_all = (x_all.astype(np.float32) / np.float32(_SCALE_MAX / 2)) - np.float32(1.0)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1E7]))
    parts = dirichlet_split(y_all, hospitals, alpha, rng)
    shards: dict[str, Shard] = {}
    for index, (name, part) in enumerate(zip(names, parts, strict=True)):
        y = y_all[part]
        split_rng = np.random.default_rng(np.random.SeedSequence([seed, 0x1E7, index]))
        train, test = stratified_split(y, train_fraction, split_rng)
        if len(test) == 0:
            train, test = train[1:], train[:1]
        shards[name] = Shard(
            name=name,
            x_train=np.ascontiguousarray(x_all[part[train]]),
            y_train=y[train],
            x_test=np.ascontiguousarray(x_all[part[test]]),
            y_test=y[test],
            feature_names=FEATURE_NAMES,
            num_classes=len(LETTERS),
        )
    return shards
