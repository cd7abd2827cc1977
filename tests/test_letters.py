"""The letters data set (UCI Letter Recognition from Debian's r-cran-mlbench) and its reader."""

from __future__ import annotations

import lzma
import struct
from pathlib import Path

import numpy as np
import pytest

from apiary.core.data.datasets import DatasetSpec
from apiary.core.data.letters import (
    FEATURE_NAMES,
    LETTERS,
    LETTERS_RDA,
    load_letter_frame,
    load_letters_shards,
)
from apiary.core.data.rdata import rda_data_frame
from apiary.core.errors import InvalidInput
from apiary.core.flat import param_count
from apiary.core.models import build_model

needs_mlbench = pytest.mark.skipif(
    not LETTERS_RDA.is_file(), reason="Debian package r-cran-mlbench is not installed")


@needs_mlbench
def test_the_table_is_uci_s() -> None:
    x, y = load_letter_frame()
    assert x.shape == (20_000, 16) and y.shape == (20_000,)
    # UCI's letter-recognition.data, first line: T,2,8,3,5,1,8,13,0,6,6,10,8,0,8,0,8
    assert LETTERS[y[0]] == "T"
    assert x[0].tolist() == [2, 8, 3, 5, 1, 8, 13, 0, 6, 6, 10, 8, 0, 8, 0, 8]
    # UCI's class counts: 789 A, 766 B, ..., 734 Z.
    counts = np.bincount(y, minlength=26)
    assert (counts[0], counts[1], counts[-1]) == (789, 766, 734) and counts.sum() == 20_000


@needs_mlbench
def test_shards_partition_every_letter_and_fit_the_wide_mlp() -> None:
    shards = load_letters_shards(seed=0)
    assert list(shards) == [f"site{i}" for i in range(1, 6)]
    assert sum(s.num_train + s.num_test for s in shards.values()) == 20_000
    for shard in shards.values():
        assert shard.input_shape == (16,) and shard.num_classes == 26
        assert shard.feature_names == FEATURE_NAMES
        assert shard.x_train.min() >= -1.0 and shard.x_train.max() <= 1.0
        assert 0.15 < shard.num_test / (shard.num_train + shard.num_test) < 0.25
    model = build_model(DatasetSpec("letters").model, (16,), 26, seed=0)
    assert param_count(model) == 111_770 >= 100_000


@needs_mlbench
def test_deterministic_given_seed_and_skewed_differently_across_seeds() -> None:
    first, again, other = (load_letters_shards(seed=s) for s in (0, 0, 1))
    assert all(first[n].equals(again[n]) for n in first)
    assert not all(first[n].equals(other[n]) for n in first)
    mixes = [np.bincount(s.y_train, minlength=26) / s.num_train for s in first.values()]
    assert max(np.abs(a - b).sum() for a in mixes for b in mixes) > 0.5, "label skew"


@needs_mlbench
def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="at least 2 hospitals"):
        load_letters_shards(hospitals=1)
    with pytest.raises(InvalidInput, match="alpha must be > 0"):
        load_letters_shards(alpha=0.0)
    with pytest.raises(InvalidInput, match="train_fraction"):
        load_letters_shards(train_fraction=1.0)
    with pytest.raises(FileNotFoundError, match="r-cran-mlbench"):
        load_letters_shards(path=tmp_path / "missing.rda")
    with pytest.raises(InvalidInput, match="split of the heart data set"):
        DatasetSpec("letters", split="flamby")


# ---------------------------------------------------------------------- the R data reader

def _xdr_int(value: int) -> bytes:
    return struct.pack(">i", value)


def _char(text: str) -> bytes:
    return _xdr_int(9 | (1 << 18)) + _xdr_int(len(text)) + text.encode()


def _strings(*texts: str) -> bytes:
    return _xdr_int(16) + _xdr_int(len(texts)) + b"".join(_char(t) for t in texts)


def _attr(name: str, value: bytes, last: bool) -> bytes:
    tail = _xdr_int(254) if last else b""
    return _xdr_int(2 | (1 << 10)) + _xdr_int(1) + _char(name) + value + tail


def _tiny_rda(path: Path) -> None:
    """A data frame ``df``: a double column ``a`` (1.5, 2.5) and a factor ``f`` (y, x)."""
    a = _xdr_int(14) + _xdr_int(2) + struct.pack(">2d", 1.5, 2.5)
    factor = (_xdr_int(13 | (1 << 8) | (1 << 9)) + _xdr_int(2) + struct.pack(">2i", 2, 1)
              + _attr("levels", _strings("x", "y"), False)
              + _attr("class", _strings("factor"), True))
    frame = (_xdr_int(19 | (1 << 8) | (1 << 9)) + _xdr_int(2) + a + factor
             + _attr("names", _strings("a", "f"), False)
             + _attr("class", _strings("data.frame"), True))
    body = (b"RDX2\nX\n" + _xdr_int(2) + _xdr_int(0x040000) + _xdr_int(0x020300)
            + _xdr_int(2 | (1 << 10)) + _xdr_int(1) + _char("df") + frame + _xdr_int(254))
    path.write_bytes(lzma.compress(body))


def test_reader_reads_numeric_and_factor_columns(tmp_path: Path) -> None:
    path = tmp_path / "tiny.rda"
    _tiny_rda(path)
    columns = rda_data_frame(path, "df")
    assert columns["a"].tolist() == [1.5, 2.5]
    assert columns["f"].tolist() == [1, 0] and columns["f.levels"] == ("x", "y")
    with pytest.raises(InvalidInput, match="no data frame named 'other'"):
        rda_data_frame(path, "other")


def test_reader_refuses_what_is_not_r_data(tmp_path: Path) -> None:
    path = tmp_path / "bad.rda"
    path.write_bytes(b"not R data at all")
    with pytest.raises(InvalidInput, match="not an R data file"):
        rda_data_frame(path, "df")
    _tiny_rda(path)
    truncated = lzma.decompress(path.read_bytes())[:40]
    path.write_bytes(truncated)
    with pytest.raises(InvalidInput, match="ends early"):
        rda_data_frame(path, "df")
