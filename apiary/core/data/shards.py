"""One hospital's private data, already split into train and test, and its file formats.

A :class:`Shard` is what a node trains on. It never leaves the hospital; only weights do.

File formats (chosen by the suffix of the path):

``.npz``
    ``x_train``, ``y_train``, ``x_test``, ``y_test`` (the arrays as they are), ``feature_names``
    (unicode array), ``name`` and ``num_classes`` (0-d arrays). Read with ``allow_pickle=False``,
    so a shard file cannot run code. Works for tabular and image shards.
``.csv``
    Tabular shards only. One row per sample: the feature columns (named by ``feature_names``),
    then ``label`` (integer class) and ``split`` (``train`` or ``test``). The writer puts one
    comment line first, ``# apiary-shard {"name": ..., "num_classes": ...}``; a CSV without it
    (say, exported by a hospital's own tools) is accepted too, and then the name is the file's
    stem and ``num_classes`` is ``max(2, largest label + 1)``.

Anything malformed gives an :class:`~apiary.core.errors.InvalidInput` (a ``ValueError``)
that names the file and says what is missing or wrong.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apiary.core.errors import InvalidInput

__all__ = ["CSV_LABEL_COLUMN", "CSV_SPLIT_COLUMN", "Shard"]

CSV_LABEL_COLUMN = "label"
CSV_SPLIT_COLUMN = "split"
_CSV_MAGIC = "# apiary-shard "
_NPZ_ARRAYS = ("x_train", "y_train", "x_test", "y_test", "feature_names", "name", "num_classes")
_SPLITS = ("train", "test")


@dataclass(frozen=True, eq=False)
class Shard:
    """One hospital's private data, already split.

    ``x_*`` are float32, ``(n, d)`` for tabular data or ``(n, 1, 28, 28)`` for images;
    ``y_*`` are int64 class indices in ``[0, num_classes)``. For tabular shards
    ``feature_names`` has one name per column; image shards may leave it empty.
    The constructor checks all of this (``ValueError``); ``eq=False`` because arrays have no
    single truth value — compare shards with :meth:`equals`.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    feature_names: tuple[str, ...]
    num_classes: int

    def __post_init__(self) -> None:
        problems = _validate(self)
        if problems:
            raise InvalidInput(f"invalid shard {self.name!r}: " + "; ".join(problems))

    # ------------------------------------------------------------------ properties
    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. ``(15,)`` or ``(1, 28, 28)``."""
        return tuple(int(s) for s in self.x_train.shape[1:])

    @property
    def num_train(self) -> int:
        return int(self.x_train.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.x_test.shape[0])

    def equals(self, other: Shard) -> bool:
        """True when every field is identical (arrays compared exactly, dtype included)."""
        return (
            self.name == other.name
            and self.feature_names == other.feature_names
            and self.num_classes == other.num_classes
            and all(
                a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
                for a, b in (
                    (self.x_train, other.x_train),
                    (self.y_train, other.y_train),
                    (self.x_test, other.x_test),
                    (self.y_test, other.y_test),
                )
            )
        )

    # ------------------------------------------------------------------ save
    def save(self, path: Path) -> None:
        """Write to ``path``: ``.npz`` (any shard) or ``.csv`` (tabular shards only)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".npz":
            self._save_npz(path)
        elif suffix == ".csv":
            self._save_csv(path)
        else:
            raise InvalidInput(_bad_suffix(path))

    def _save_npz(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # np.savez appends ".npz" to names without it; write through a file handle to keep `path`.
        with path.open("wb") as fh:
            np.savez_compressed(
                fh,
                x_train=self.x_train,
                y_train=self.y_train,
                x_test=self.x_test,
                y_test=self.y_test,
                feature_names=np.asarray(self.feature_names, dtype=np.str_),
                name=np.asarray(self.name, dtype=np.str_),
                num_classes=np.asarray(self.num_classes, dtype=np.int64),
            )

    def _save_csv(self, path: Path) -> None:
        if self.x_train.ndim != 2:
            raise InvalidInput(
                f"{path}: CSV holds tabular shards only; shard {self.name!r} has samples of "
                f"shape {self.input_shape} — save it as .npz"
            )
        import pandas as pd

        columns = list(self.feature_names)
        frames = []
        for split, x, y in _splits(self):
            frame = pd.DataFrame(x, columns=columns)
            frame[CSV_LABEL_COLUMN] = y
            frame[CSV_SPLIT_COLUMN] = split
            frames.append(frame)
        table = pd.concat(frames, ignore_index=True)
        meta = json.dumps({"name": self.name, "num_classes": int(self.num_classes)})
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="") as fh:
            fh.write(f"{_CSV_MAGIC}{meta}\n")
            # float32 -> repr with 9 significant digits round-trips exactly.
            table.to_csv(fh, index=False, float_format="%.9g", lineterminator="\n")

    # ------------------------------------------------------------------ load
    @classmethod
    def load(cls, path: Path) -> Shard:
        """Read a shard written by :meth:`save` (or a hospital's own CSV in the same layout)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"shard file not found: {path}")
        suffix = path.suffix.lower()
        if suffix == ".npz":
            return _load_npz(path)
        if suffix == ".csv":
            return _load_csv(path)
        raise InvalidInput(_bad_suffix(path))


# ---------------------------------------------------------------------- helpers
def _bad_suffix(path: Path) -> str:
    return f"{path}: unsupported shard file suffix {path.suffix!r}; use .npz or .csv"


def _splits(shard: Shard) -> tuple[tuple[str, np.ndarray, np.ndarray], ...]:
    return (("train", shard.x_train, shard.y_train), ("test", shard.x_test, shard.y_test))


def _validate(shard: Shard) -> list[str]:
    problems: list[str] = []
    if not isinstance(shard.name, str) or not shard.name:
        problems.append("name must be a non-empty string")
    if not isinstance(shard.feature_names, tuple) or not all(
        isinstance(f, str) for f in shard.feature_names
    ):
        problems.append("feature_names must be a tuple of str")
    if isinstance(shard.num_classes, bool) or not isinstance(shard.num_classes, int | np.integer):
        problems.append(f"num_classes must be an int, got {type(shard.num_classes).__name__}")
        return problems
    if shard.num_classes < 2:
        problems.append(f"num_classes must be >= 2, got {shard.num_classes}")
    for split, x, y in _splits(shard):
        if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
            problems.append(f"x_{split} and y_{split} must be numpy arrays")
            continue
        if x.dtype != np.float32:
            problems.append(f"x_{split} must be float32, got {x.dtype}")
        if y.dtype != np.int64:
            problems.append(f"y_{split} must be int64, got {y.dtype}")
        if x.ndim < 2:
            problems.append(f"x_{split} must have a sample axis and features, got shape {x.shape}")
        if y.ndim != 1:
            problems.append(f"y_{split} must be 1-D, got shape {y.shape}")
        if x.ndim >= 1 and y.ndim == 1 and x.shape[0] != y.shape[0]:
            problems.append(f"x_{split} has {x.shape[0]} rows but y_{split} has {y.shape[0]}")
        if x.dtype.kind == "f" and x.size and not np.isfinite(x).all():
            problems.append(f"x_{split} contains NaN or infinite values")
        if y.dtype.kind in "iu" and y.size and (y.min() < 0 or y.max() >= shard.num_classes):
            problems.append(
                f"y_{split} has labels outside [0, {shard.num_classes}): "
                f"min {y.min()}, max {y.max()}"
            )
    if problems:
        return problems
    if shard.x_train.shape[1:] != shard.x_test.shape[1:]:
        problems.append(
            f"train samples have shape {shard.x_train.shape[1:]} "
            f"but test samples {shard.x_test.shape[1:]}"
        )
    if shard.x_train.shape[0] == 0:
        problems.append("no training samples")
    if shard.x_train.ndim == 2 and len(shard.feature_names) != shard.x_train.shape[1]:
        problems.append(
            f"{len(shard.feature_names)} feature names for {shard.x_train.shape[1]} feature columns"
        )
    if (
        shard.x_train.ndim > 2
        and shard.feature_names
        and len(shard.feature_names) != int(np.prod(shard.x_train.shape[1:]))
    ):
        problems.append("image shards need no feature names, or one per pixel")
    if len(set(shard.feature_names)) != len(shard.feature_names):
        problems.append("feature names must be unique")
    if {CSV_LABEL_COLUMN, CSV_SPLIT_COLUMN} & set(shard.feature_names):
        problems.append(f"feature names may not be {CSV_LABEL_COLUMN!r} or {CSV_SPLIT_COLUMN!r}")
    return problems


def _load_npz(path: Path) -> Shard:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in _NPZ_ARRAYS if k in data.files}
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        # ValueError: object arrays (allow_pickle=False), bad array headers, ...
        raise InvalidInput(f"{path}: not a readable .npz shard file ({exc})") from exc
    missing = [k for k in _NPZ_ARRAYS if k not in arrays]
    if missing:
        raise InvalidInput(
            f"{path}: shard file is missing array(s) {', '.join(missing)} "
            f"(expected {', '.join(_NPZ_ARRAYS)})"
        )
    try:
        return Shard(
            name=str(arrays["name"].item()),
            x_train=arrays["x_train"],
            y_train=arrays["y_train"],
            x_test=arrays["x_test"],
            y_test=arrays["y_test"],
            feature_names=tuple(str(f) for f in arrays["feature_names"].reshape(-1)),
            num_classes=int(arrays["num_classes"].item()),
        )
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{path}: {exc}") from exc


def _load_csv(path: Path) -> Shard:
    import pandas as pd

    meta: dict[str, object] = {}
    try:
        with path.open("r", encoding="utf-8") as fh:
            first = fh.readline()
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not a UTF-8 text CSV shard file ({exc})") from exc
    has_meta_line = first.startswith(_CSV_MAGIC)
    if has_meta_line:
        try:
            loaded = json.loads(first[len(_CSV_MAGIC) :])
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"{path}: malformed '{_CSV_MAGIC.strip()}' header ({exc})") from exc
        if not isinstance(loaded, dict):
            raise InvalidInput(f"{path}: '{_CSV_MAGIC.strip()}' header must be a JSON object")
        meta = loaded
    try:
        table = pd.read_csv(path, skiprows=1 if has_meta_line else 0, skip_blank_lines=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{path}: not a readable CSV shard file ({exc})") from exc

    missing = [c for c in (CSV_LABEL_COLUMN, CSV_SPLIT_COLUMN) if c not in table.columns]
    if missing:
        raise InvalidInput(
            f"{path}: missing column(s) {', '.join(repr(c) for c in missing)}; a CSV shard has the "
            f"feature columns, then {CSV_LABEL_COLUMN!r} and {CSV_SPLIT_COLUMN!r}"
        )
    features = [c for c in table.columns if c not in (CSV_LABEL_COLUMN, CSV_SPLIT_COLUMN)]
    if not features:
        raise InvalidInput(f"{path}: no feature columns")
    unnamed = [c for c in features if str(c).startswith("Unnamed:")]
    if unnamed:
        raise InvalidInput(f"{path}: column(s) without a header name: {', '.join(unnamed)}")

    split = table[CSV_SPLIT_COLUMN].astype(str).str.strip().str.lower()
    bad_split = sorted(set(split) - set(_SPLITS))
    if bad_split:
        raise InvalidInput(
            f"{path}: column {CSV_SPLIT_COLUMN!r} must be 'train' or 'test', found {bad_split[:5]}"
        )
    numeric = table[features].apply(pd.to_numeric, errors="coerce")
    bad_cols = [c for c in features if numeric[c].isna().any()]
    if bad_cols:
        raise InvalidInput(
            f"{path}: missing or non-numeric values in feature column(s) {', '.join(bad_cols)}"
        )
    labels = pd.to_numeric(table[CSV_LABEL_COLUMN], errors="coerce")
    if labels.isna().any() or not np.all(np.mod(labels.to_numpy(), 1) == 0):
        raise InvalidInput(f"{path}: column {CSV_LABEL_COLUMN!r} must hold integer class labels")

    x = numeric.to_numpy(dtype=np.float32)
    y = labels.to_numpy().astype(np.int64)
    is_train = (split == "train").to_numpy()
    name = str(meta.get("name") or path.stem)
    raw_classes = meta.get("num_classes")
    if raw_classes is None:
        num_classes = max(2, int(y.max()) + 1) if y.size else 2
    elif isinstance(raw_classes, int):
        num_classes = raw_classes
    else:
        raise InvalidInput(f"{path}: header num_classes must be an integer, got {raw_classes!r}")
    try:
        return Shard(
            name=name,
            x_train=np.ascontiguousarray(x[is_train]),
            y_train=y[is_train],
            x_test=np.ascontiguousarray(x[~is_train]),
            y_test=y[~is_train],
            feature_names=tuple(str(c) for c in features),
            num_classes=num_classes,
        )
    except ValueError as exc:
        raise InvalidInput(f"{path}: {exc}") from exc
