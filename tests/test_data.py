"""Hospital shards: the real UCI Heart Disease hospitals and the shard file formats."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from apiary.core.data import FEATURE_NAMES, HOSPITALS, Shard, load_heart_shards, write_heart_shards
from apiary.core.data.heart import NUMERIC_FEATURES, load_heart_frame


@pytest.fixture(scope="module")
def shards() -> dict[str, Shard]:
    return load_heart_shards(seed=0)


def _tiny_shard(name: str = "tiny") -> Shard:
    rng = np.random.default_rng(0)
    return Shard(
        name=name,
        x_train=rng.normal(size=(6, 3)).astype(np.float32),
        y_train=np.array([0, 1, 0, 1, 1, 0], dtype=np.int64),
        x_test=rng.normal(size=(3, 3)).astype(np.float32),
        y_test=np.array([1, 0, 1], dtype=np.int64),
        feature_names=("a", "b", "c"),
        num_classes=2,
    )


# ---------------------------------------------------------------- heart disease hospitals
def test_four_hospitals_with_identical_feature_columns(shards: dict[str, Shard]) -> None:
    assert tuple(shards) == HOSPITALS == ("cleveland", "hungary", "switzerland", "va")
    assert len(FEATURE_NAMES) == 15
    for name, shard in shards.items():
        assert shard.name == name
        assert shard.feature_names == FEATURE_NAMES
        assert shard.num_classes == 2
        assert shard.x_train.dtype == np.float32 and shard.x_test.dtype == np.float32
        assert shard.y_train.dtype == np.int64 and shard.y_test.dtype == np.int64
        assert shard.x_train.shape[1] == shard.x_test.shape[1] == len(FEATURE_NAMES)
        assert set(np.unique(np.concatenate([shard.y_train, shard.y_test]))) <= {0, 1}


def test_row_counts_match_the_fed_heart_disease_benchmark(shards: dict[str, Shard]) -> None:
    # FLamby's Fed-Heart-Disease: 303 / 261 / 46 / 130 patients after cleaning.
    totals = {name: s.num_train + s.num_test for name, s in shards.items()}
    assert totals == {"cleveland": 303, "hungary": 261, "switzerland": 46, "va": 130}
    for shard in shards.values():
        assert shard.num_train / (shard.num_train + shard.num_test) == pytest.approx(
            2 / 3, abs=0.02
        )


def test_no_missing_values_and_clean_table() -> None:
    frame = load_heart_frame()
    assert not frame.isna().any().any()
    assert set(frame["hospital"]) == set(HOSPITALS)
    one_hot = [c for c in FEATURE_NAMES if c.startswith(("cp_", "restecg_"))]
    assert set(np.unique(frame[one_hot].to_numpy())) <= {0.0, 1.0}
    # exactly one category per patient for each one-hot group
    for prefix in ("cp_", "restecg_"):
        group = [c for c in FEATURE_NAMES if c.startswith(prefix)]
        assert (frame[group].sum(axis=1) == 1).all()


def test_no_nans_and_standardised_with_training_statistics(shards: dict[str, Shard]) -> None:
    numeric = [FEATURE_NAMES.index(c) for c in NUMERIC_FEATURES]
    for name, shard in shards.items():
        assert np.isfinite(shard.x_train).all() and np.isfinite(shard.x_test).all()
        means = shard.x_train[:, numeric].mean(axis=0)
        stds = shard.x_train[:, numeric].std(axis=0)
        np.testing.assert_allclose(means, 0.0, atol=1e-5)
        for col, std in zip(NUMERIC_FEATURES, stds, strict=True):
            if name == "switzerland" and col == "chol":  # recorded as 0 for every patient
                assert std == 0.0
            else:
                assert std == pytest.approx(1.0, abs=1e-4), (name, col)


def test_split_is_stratified(shards: dict[str, Shard]) -> None:
    for name, shard in shards.items():
        rate_train, rate_test = shard.y_train.mean(), shard.y_test.mean()
        assert abs(rate_train - rate_test) < 0.05, (name, rate_train, rate_test)


def test_deterministic_given_seed_and_different_across_seeds(shards: dict[str, Shard]) -> None:
    again = load_heart_shards(seed=0)
    other = load_heart_shards(seed=1)
    for name in HOSPITALS:
        assert shards[name].equals(again[name])
        assert not shards[name].equals(other[name])
        # the same patients, split differently: totals are unchanged
        assert shards[name].num_train == other[name].num_train


def test_write_heart_shards(tmp_path: Path, shards: dict[str, Shard]) -> None:
    paths = write_heart_shards(tmp_path / "out", seed=0)
    assert list(paths) == list(HOSPITALS)
    for name, path in paths.items():
        assert path == tmp_path / "out" / f"{name}.npz"
        assert Shard.load(path).equals(shards[name])


# ---------------------------------------------------------------- shard files
@pytest.mark.parametrize("suffix", [".npz", ".csv"])
def test_round_trip(tmp_path: Path, shards: dict[str, Shard], suffix: str) -> None:
    for shard in (shards["cleveland"], _tiny_shard()):
        path = tmp_path / f"{shard.name}{suffix}"
        shard.save(path)
        assert path.exists()
        assert Shard.load(path).equals(shard)


def test_image_shard_round_trips_as_npz_but_not_csv(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    shard = Shard(
        name="images",
        x_train=rng.random((4, 1, 28, 28), dtype=np.float32),
        y_train=np.array([0, 3, 9, 3], dtype=np.int64),
        x_test=rng.random((2, 1, 28, 28), dtype=np.float32),
        y_test=np.array([1, 2], dtype=np.int64),
        feature_names=(),
        num_classes=10,
    )
    shard.save(tmp_path / "img.npz")
    assert Shard.load(tmp_path / "img.npz").equals(shard)
    with pytest.raises(ValueError, match="tabular"):
        shard.save(tmp_path / "img.csv")


def test_plain_csv_without_header_line_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "north.csv"
    path.write_text("a,b,label,split\n1,2,0,train\n3,4,1,train\n5,6,1,test\n")
    shard = Shard.load(path)
    assert shard.name == "north" and shard.num_classes == 2
    assert shard.feature_names == ("a", "b")
    np.testing.assert_array_equal(shard.x_train, np.array([[1, 2], [3, 4]], dtype=np.float32))
    np.testing.assert_array_equal(shard.y_test, np.array([1]))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.npz"):
        Shard.load(tmp_path / "nowhere.npz")


def test_corrupt_npz_gives_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(b"this is not a zip file at all")
    with pytest.raises(ValueError, match=r"broken\.npz.*not a readable \.npz"):
        Shard.load(path)


def test_npz_missing_array_is_named(tmp_path: Path) -> None:
    path = tmp_path / "partial.npz"
    _tiny_shard().save(path)
    with zipfile.ZipFile(path) as zin:
        kept = {n: zin.read(n) for n in zin.namelist() if n != "y_test.npy"}
    with zipfile.ZipFile(path, "w") as zout:
        for n, data in kept.items():
            zout.writestr(n, data)
    with pytest.raises(ValueError, match=r"partial\.npz.*missing array\(s\) y_test"):
        Shard.load(path)


def test_csv_missing_column_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nolabel.csv"
    path.write_text("a,b,split\n1,2,train\n3,4,test\n")
    with pytest.raises(ValueError, match=r"nolabel\.csv.*missing column\(s\) 'label'"):
        Shard.load(path)


def test_csv_bad_values_are_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("a,b,label,split\n1,x,0,train\n3,,1,test\n")
    with pytest.raises(ValueError, match=r"bad\.csv.*non-numeric values in feature column\(s\) b"):
        Shard.load(path)
    path.write_text("a,label,split\n1,0,train\n3,1,validation\n")
    with pytest.raises(ValueError, match=r"bad\.csv.*'split'.*validation"):
        Shard.load(path)
    path.write_text("a,label,split\n1,0,test\n3,1,test\n")
    with pytest.raises(ValueError, match=r"bad\.csv.*no training samples"):
        Shard.load(path)


def test_unsupported_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.parquet"):
        _tiny_shard().save(tmp_path / "x.parquet")


def test_shard_validates_its_fields() -> None:
    good = _tiny_shard()
    fields = (good.y_train, good.x_test, good.y_test, good.feature_names, 2)
    with pytest.raises(ValueError, match="float32"):
        Shard("s", good.x_train.astype(np.float64), *fields)
    with pytest.raises(ValueError, match="labels outside"):
        Shard("s", good.x_train, good.y_train + 5, good.x_test, good.y_test, good.feature_names, 2)
    with pytest.raises(ValueError, match="feature names"):
        Shard("s", good.x_train, good.y_train, good.x_test, good.y_test, ("a", "b"), 2)
    nan_x = good.x_train.copy()
    nan_x[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Shard("s", nan_x, good.y_train, good.x_test, good.y_test, good.feature_names, 2)
