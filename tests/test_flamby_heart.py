"""FLamby's Fed-Heart-Disease split (`--split flamby`) and FLamby's metric in `apiary compare`.

The reference values come from outside this code: FLamby's README (split sizes), UCI's
``processed.<centre>.data`` files (the md5 sums FLamby's download script checks; raw rows),
scikit-learn 1.5.2's ``train_test_split(..., random_state=43)`` on those files (first indices),
and scikit-learn's own docstring examples of ``_approximate_mode``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apiary.core.data.datasets import DatasetSpec
from apiary.core.data.flamby_heart import (
    FEATURE_NAMES,
    SPLIT_SIZES,
    _approximate_mode,
    load_flamby_heart_shards,
    train_test_split_indices,
)
from apiary.core.data.heart import HOSPITALS, load_heart_frame
from apiary.core.data.shards import Shard
from apiary.core.errors import InvalidInput


@pytest.fixture(scope="module")
def shards() -> dict[str, Shard]:
    return load_flamby_heart_shards()


@pytest.fixture(scope="module")
def raw() -> dict[str, Shard]:
    return load_flamby_heart_shards(normalize=False)


def test_split_sizes_are_flamby_s(shards: dict[str, Shard]) -> None:
    assert list(shards) == list(HOSPITALS)
    sizes = {name: (s.num_train, s.num_test) for name, s in shards.items()}
    assert sizes == {"cleveland": (199, 104), "hungary": (172, 89), "switzerland": (30, 16),
                     "va": (85, 45)} == SPLIT_SIZES


def test_thirteen_features_with_the_first_category_dropped(shards: dict[str, Shard]) -> None:
    assert len(FEATURE_NAMES) == 13
    for shard in shards.values():
        assert shard.input_shape == (13,) and shard.feature_names == FEATURE_NAMES
        assert shard.num_classes == 2
    assert "cp_typical_angina" not in FEATURE_NAMES and "restecg_normal" not in FEATURE_NAMES
    assert FEATURE_NAMES[8:] == ("cp_atypical_angina", "cp_non_anginal", "cp_asymptomatic",
                                 "restecg_st_t_abnormality", "restecg_lv_hypertrophy")


# scikit-learn 1.5.2, train_test_split(np.arange(n), test_size=1 - 0.66, train_size=0.66,
# random_state=43, shuffle=True, stratify=...) on UCI's files, as FLamby calls it.
SKLEARN_FIRST_INDICES = {
    "cleveland": ([74, 97, 183, 111, 206], [165, 42, 250, 65, 105]),
    "hungary": ([121, 30, 11, 146, 50], [68, 120, 188, 252, 236]),
    "switzerland": ([9, 37, 10, 36, 31], [29, 32, 20, 40, 6]),
    "va": ([80, 52, 63, 77, 82], [112, 45, 92, 35, 76]),
}


@pytest.mark.parametrize("hospital", HOSPITALS)
def test_split_indices_are_scikit_learn_s(hospital: str) -> None:
    frame = load_heart_frame()
    labels = frame.loc[frame["hospital"] == hospital, "label"].to_numpy()
    stratify = hospital != "switzerland"  # 45 with disease and 1 without: FLamby does not
    train, test = train_test_split_indices(labels, stratify=stratify)
    assert (len(train), len(test)) == SPLIT_SIZES[hospital]
    assert sorted({*train, *test}) == list(range(len(labels)))
    expected_train, expected_test = SKLEARN_FIRST_INDICES[hospital]
    assert train[:5].tolist() == expected_train and test[:5].tolist() == expected_test


def test_labels_per_split_and_switzerland_unstratified(shards: dict[str, Shard]) -> None:
    positives = {n: (int(s.y_train.sum()), int(s.y_test.sum())) for n, s in shards.items()}
    assert positives == {"cleveland": (91, 48), "hungary": (65, 33), "switzerland": (30, 15),
                         "va": (66, 35)}
    # Not stratified, the only Swiss patient without disease lands in the test split.
    assert shards["switzerland"].y_test.tolist().count(0) == 1


# The first training and the first test patient of each centre, raw, in FLamby's 13 columns:
# age, sex, trestbps, chol, fbs, thalach, exang, oldpeak, cp 2/3/4, restecg 1/2 (UCI's
# processed files; e.g. Cleveland's first record: 63, male, cp 1, 145, 233, fbs 1, restecg 2,
# 150, no exang, oldpeak 2.3, num 0).
FIRST_ROWS = {
    "cleveland": ([63, 1, 145, 233, 1, 150, 0, 2.3, 0, 0, 0, 0, 1],
                  [56, 1, 120, 236, 0, 178, 0, 0.8, 1, 0, 0, 0, 0]),
    "hungary": ([28, 1, 130, 132, 0, 185, 0, 0, 1, 0, 0, 0, 1],
                [31, 0, 100, 219, 0, 150, 0, 0, 1, 0, 0, 1, 0]),
    "switzerland": ([38, 0, 110, 0, 0, 156, 0, 0, 0, 0, 1, 0, 0],
                    [46, 1, 115, 0, 0, 113, 1, 1.5, 0, 0, 1, 0, 0]),
    "va": ([63, 1, 140, 260, 0, 112, 1, 3, 0, 0, 1, 1, 0],
           [44, 1, 130, 209, 0, 127, 0, 0, 0, 0, 1, 1, 0]),
}


@pytest.mark.parametrize("hospital", HOSPITALS)
def test_known_rows_in_file_order(raw: dict[str, Shard], hospital: str) -> None:
    first_train, first_test = FIRST_ROWS[hospital]
    np.testing.assert_array_equal(raw[hospital].x_train[0],
                                  np.asarray(first_train, dtype=np.float32))
    np.testing.assert_array_equal(raw[hospital].x_test[0],
                                  np.asarray(first_test, dtype=np.float32))


def test_every_column_standardised_with_the_centre_s_training_statistics(
        shards: dict[str, Shard], raw: dict[str, Shard]) -> None:
    for name in HOSPITALS:
        train = torch.from_numpy(raw[name].x_train)
        mean, scale = train.mean(dim=0), train.std(dim=0) + 1e-9
        np.testing.assert_array_equal(shards[name].x_train, ((train - mean) / scale).numpy())
        np.testing.assert_array_equal(
            shards[name].x_test, ((torch.from_numpy(raw[name].x_test) - mean) / scale).numpy())
        varying = raw[name].x_train.std(axis=0) > 0
        np.testing.assert_allclose(shards[name].x_train[:, varying].mean(axis=0), 0, atol=1e-5)
        np.testing.assert_allclose(shards[name].x_train[:, varying].std(axis=0, ddof=1), 1,
                                   atol=1e-5)
        assert not shards[name].x_train[:, ~varying].any(), "a constant column becomes 0"
    chol = FEATURE_NAMES.index("chol")
    assert not raw["switzerland"].x_train[:, chol].any(), "Switzerland codes chol as 0"


def test_the_split_is_the_same_for_every_seed() -> None:
    spec = DatasetSpec("heart", split="flamby")
    first, other = spec.load(0), spec.load(7)
    assert all(first[n].equals(other[n]) for n in HOSPITALS)
    assert spec.label == "heart-flamby" and spec.describe()["split"] == "flamby"
    assert DatasetSpec("heart").label == "heart"


def test_bad_split_choices_are_refused() -> None:
    with pytest.raises(InvalidInput, match="unknown split 'flamb'"):
        DatasetSpec("heart", split="flamb")
    with pytest.raises(InvalidInput, match="split of the heart data set"):
        DatasetSpec("fashion", split="flamby")
    with pytest.raises(ValueError, match="train_fraction"):
        train_test_split_indices(np.zeros(10), stratify=False, train_fraction=1.0)
    with pytest.raises(ValueError, match="at least 2 samples of every class"):
        train_test_split_indices(np.array([0] * 9 + [1]), stratify=True)


@pytest.mark.parametrize(("counts", "draws", "seed", "expected"), [
    ([4, 2], 3, 0, [2, 1]),
    ([5, 2], 4, 0, [3, 1]),
    ([2, 2, 2, 1], 2, 0, [0, 1, 1, 0]),
    ([2, 2, 2, 1], 2, 42, [1, 1, 0, 0]),
])
def test_approximate_mode_matches_scikit_learn_s_examples(
        counts: list[int], draws: int, seed: int, expected: list[int]) -> None:
    got = _approximate_mode(np.asarray(counts), draws, np.random.RandomState(seed))
    assert got.tolist() == expected


def test_unstratified_split_is_shuffle_split_s_permutation() -> None:
    train, test = train_test_split_indices(np.ones(46), stratify=False)
    permutation = np.random.RandomState(43).permutation(46)
    assert test.tolist() == permutation[:16].tolist()
    assert train.tolist() == permutation[16:].tolist()


# ---------------------------------------------------------------------- FLamby's metric

def test_compare_reports_the_mean_of_the_hospitals_accuracies(shards: dict[str, Shard]) -> None:
    from apiary.core.flat import flatten
    from apiary.core.models import build_model
    from apiary.tools.compare import aggregate, score
    from apiary.tools.compare_table import format_tables

    weights = flatten(build_model("mlp", (13,), 2, seed=3))
    scored = score(weights, shards, "mlp", seed=3)
    per_node = [scored["per_node"][n]["accuracy"] for n in HOSPITALS]
    assert scored["client_mean"]["accuracy"] == pytest.approx(np.mean(per_node))
    assert scored["client_mean"]["accuracy"] != pytest.approx(scored["overall"]["accuracy"])
    aucs = [scored["per_node"][n]["auc"] for n in HOSPITALS]
    assert scored["client_mean"]["auc"] == pytest.approx(
        np.mean([a for a in aucs if a is not None]))

    summary = aggregate([scored, scored])
    assert summary["client_mean"]["accuracy"]["mean"] == pytest.approx(np.mean(per_node))
    assert summary["client_mean"]["accuracy"]["std"] == 0.0
    result = {
        "dataset": {"name": "heart", "split": "flamby"},
        "config": {"model": "mlp", "rounds": 1, "epochs": 1, "lr": 0.003, "batch_size": 16,
                   "seeds": [0, 1]},
        "hospitals": list(HOSPITALS),
        "samples": {n: {"train": [s.num_train] * 2, "test": [s.num_test] * 2}
                    for n, s in shards.items()},
        "methods": {"fedavg": {"label": "FedAvg (plaintext)", **summary,
                               "seconds": {"mean": 1.0, "std": 0.0}}},
        "checks": {},
        "wall_seconds": 1.0,
    }
    table = format_tables(result)
    assert "dataset heart, split flamby" in table
    header = next(line for line in table.splitlines() if line.startswith("method"))
    assert header.split()[:3] == ["method", "all", "mean"]
    assert f"{100 * np.mean(per_node):.1f} ± 0.0" in table
