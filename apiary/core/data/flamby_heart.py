"""FLamby's *Fed-Heart-Disease* split and features, exactly, on the same four UCI hospitals.

FLamby (du Terrail et al., NeurIPS 2022 Datasets & Benchmarks, github.com/owkin/FLamby) builds
its benchmark in ``flamby/datasets/fed_heart_disease/dataset.py`` (``HeartDiseaseRaw``). This
module does the same steps on the same patients (the cleaned table of
:func:`apiary.core.data.heart.load_heart_frame`, which has exactly FLamby's rows, per centre in
the order of UCI's ``processed.<centre>.data`` files):

* per centre, a train/test split of scikit-learn's ``train_test_split(np.arange(n),
  test_size=1 - 0.66, train_size=0.66, random_state=43, shuffle=True, stratify=...)``,
  stratified by the binary label only where both classes have more than two patients — so
  Switzerland (45 with disease, 1 without) is *not* stratified. scikit-learn is not a
  dependency: :func:`train_test_split_indices` reproduces its ``ShuffleSplit`` and
  ``StratifiedShuffleSplit`` draws from ``np.random.RandomState(43)`` call for call (those
  draws are covered by NumPy's stream-compatibility guarantee for ``RandomState``). Sizes:
  199/104, 172/89, 30/16, 85/45;
* 13 features: the 8 attributes kept as they are (age, sex, trestbps, chol, fbs, thalach,
  exang, oldpeak) then ``pd.get_dummies(columns=[cp, restecg], drop_first=True)``, which drops
  ``cp == 1`` (typical angina) and ``restecg == 0`` (normal) — see :data:`FEATURE_NAMES`;
* every one of the 13 columns standardised with its centre's *training* mean and unbiased
  standard deviation (torch's ``std``), ``(x - mean) / (std + 1e-9)`` in float32. A column that
  is constant in a centre's training split (Switzerland's ``chol``, all 0) has standard
  deviation 0, so it becomes 0 there — and a test value that differs from the constant
  becomes huge, as in FLamby;
* label: ``num > 0``.

The split does not depend on any seed (FLamby's seeds 42..46 change only the model's
initialisation and the shuffling of batches; ours 0..N-1 do the same). Rows of each split keep
the centre's file order.

One thing FLamby does that a shard cannot: its *pooled* baseline is standardised with the
statistics of the pooled training set; ``apiary compare``'s central method pools the shards as
the hospitals standardised them. The federated and local numbers are unaffected.

Nothing here prints.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from apiary.core.data.heart import HOSPITALS, load_heart_frame
from apiary.core.data.shards import Shard

__all__ = [
    "FEATURE_NAMES",
    "RANDOM_STATE",
    "SPLIT_SIZES",
    "TRAIN_FRACTION",
    "flamby_features",
    "load_flamby_heart_shards",
    "train_test_split_indices",
]

TRAIN_FRACTION = 0.66
RANDOM_STATE = 43
#: FLamby's published train/test sizes per centre (its README, "Records per center").
SPLIT_SIZES: dict[str, tuple[int, int]] = {
    "cleveland": (199, 104),
    "hungary": (172, 89),
    "switzerland": (30, 16),
    "va": (85, 45),
}
#: FLamby's 13 columns, in its order (the kept attributes, then get_dummies' columns); they are
#: also columns of :func:`load_heart_frame`, whose one-hot columns are against fixed lists.
FEATURE_NAMES: tuple[str, ...] = (
    "age", "sex_male", "trestbps", "chol", "fbs", "thalach", "exang", "oldpeak",
    "cp_atypical_angina", "cp_non_anginal", "cp_asymptomatic",
    "restecg_st_t_abnormality", "restecg_lv_hypertrophy",
)
_STD_EPSILON = 1e-9


def train_test_split_indices(
    labels: np.ndarray, stratify: bool, train_fraction: float = TRAIN_FRACTION,
    random_state: int = RANDOM_STATE,
) -> tuple[np.ndarray, np.ndarray]:
    """``train_test_split(np.arange(n), test_size=1 - f, train_size=f, random_state=r,
    shuffle=True, stratify=labels if stratify else None)``: the ``(train, test)`` indices,
    in scikit-learn's order."""
    labels = np.asarray(labels)
    n = int(labels.shape[0])
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    # sklearn's _validate_shuffle_split with float sizes: ceil for test, floor for train.
    n_test = math.ceil((1.0 - train_fraction) * n)
    n_train = math.floor(train_fraction * n)
    if n_train < 1 or n_test < 1 or n_train + n_test > n:
        raise ValueError(f"cannot split {n} samples {n_train}/{n_test}")
    rng = np.random.RandomState(random_state)
    if not stratify:
        permutation = rng.permutation(n)
        return permutation[n_test:n_test + n_train], permutation[:n_test]
    return _stratified(labels, n_train, n_test, rng)


def _stratified(labels: np.ndarray, n_train: int, n_test: int,
                rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's ``StratifiedShuffleSplit._iter_indices``, first split."""
    _, y_indices = np.unique(labels, return_inverse=True)
    class_counts = np.bincount(y_indices)
    if class_counts.min() < 2:
        raise ValueError("a stratified split needs at least 2 samples of every class")
    class_indices = np.split(np.argsort(y_indices, kind="mergesort"),
                             np.cumsum(class_counts)[:-1])
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i, count in enumerate(class_counts):
        permuted = class_indices[i].take(rng.permutation(count), mode="clip")
        train.extend(permuted[:n_i[i]])
        test.extend(permuted[n_i[i]:n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(class_counts: np.ndarray, n_draws: int,
                      rng: np.random.RandomState) -> np.ndarray:
    """scikit-learn's ``utils.extmath._approximate_mode``: per-class draws, ties broken by
    ``rng`` (which it advances exactly as scikit-learn does)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            inds = rng.choice(inds, size=add_now, replace=False)
            floored[inds] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)


def _stratifies(labels: np.ndarray) -> bool:
    """FLamby stratifies a centre when it has both classes, each with more than 2 patients."""
    levels, counts = np.unique(labels, return_counts=True)
    return len(levels) > 1 and bool(np.all(counts > 2))


def flamby_features(frame_rows: pd.DataFrame) -> np.ndarray:
    """The 13 unstandardised FLamby columns (float32) of rows of :func:`load_heart_frame`."""
    return frame_rows[list(FEATURE_NAMES)].to_numpy(dtype=np.float32)


def _standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FLamby's per-centre normalisation, in torch float32 as FLamby computes it."""
    train = torch.from_numpy(x_train)
    mean = train.mean(dim=0)
    scale = train.std(dim=0) + _STD_EPSILON
    return (((train - mean) / scale).numpy(),
            ((torch.from_numpy(x_test) - mean) / scale).numpy())


def load_flamby_heart_shards(normalize: bool = True) -> dict[str, Shard]:
    """One :class:`Shard` per hospital (keyed and ordered as :data:`HOSPITALS`) with FLamby's
    split, features and normalisation (``normalize=False``: the raw 13 columns, as FLamby's
    ``normalize`` flag); the same for every seed."""
    frame = load_heart_frame()
    shards: dict[str, Shard] = {}
    for hospital in HOSPITALS:
        part = frame[frame["hospital"] == hospital]
        x = flamby_features(part)
        y = part["label"].to_numpy(dtype=np.int64)
        # As FLamby: a patient in the test indices is "test", every other one "train".
        _, test_idx = train_test_split_indices(y, stratify=_stratifies(y))
        is_test = np.zeros(len(y), dtype=bool)
        is_test[test_idx] = True
        x_train, x_test = x[~is_test], x[is_test]
        if normalize:
            x_train, x_test = _standardise(x_train, x_test)
        shards[hospital] = Shard(
            name=hospital,
            x_train=np.ascontiguousarray(x_train, dtype=np.float32),
            y_train=y[~is_test],
            x_test=np.ascontiguousarray(x_test, dtype=np.float32),
            y_test=y[is_test],
            feature_names=FEATURE_NAMES,
            num_classes=2,
        )
    return shards
