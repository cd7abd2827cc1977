"""`apiary compare`: the Dirichlet split, the Fashion-MNIST reader, and a reduced comparison
of all five methods end to end (real node processes, anvil, coordinator)."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from apiary.cli import app
from apiary.core.coefficients import block_count
from apiary.core.data.fashion import FASHION_DIR, dirichlet_split, label_skew, read_idx
from apiary.core.flat import param_count
from apiary.core.models import build_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _labels() -> np.ndarray:
    return np.repeat(np.arange(10), 300)


def test_dirichlet_split_is_seeded_partitions_and_fills_every_hospital():
    y = _labels()
    first = dirichlet_split(y, 5, 0.5, np.random.default_rng(7))
    again = dirichlet_split(y, 5, 0.5, np.random.default_rng(7))
    other = dirichlet_split(y, 5, 0.5, np.random.default_rng(8))
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    assert all(len(part) >= 10 for part in first)
    assert np.array_equal(np.sort(np.concatenate(first)), np.arange(len(y)))


def test_label_skew_grows_as_alpha_shrinks():
    y = _labels()
    skew = {alpha: np.mean([label_skew(y, dirichlet_split(y, 5, alpha,
                                                          np.random.default_rng(s)), 10)
                            for s in range(5)])
            for alpha in (100.0, 1.0, 0.1)}
    assert skew[100.0] < 0.1 < skew[1.0] < skew[0.1]


def test_read_idx_reads_gzip_and_plain_files(tmp_path: Path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in images.shape)
    (tmp_path / "a").write_bytes(raw + images.tobytes())
    with gzip.open(tmp_path / "a.gz", "wb") as handle:
        handle.write(raw + images.tobytes())
    assert np.array_equal(read_idx(tmp_path / "a"), images)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), images)
    (tmp_path / "bad").write_bytes(raw + images.tobytes()[:-1])
    with pytest.raises(ValueError, match="header says"):
        read_idx(tmp_path / "bad")


@pytest.mark.skipif(not FASHION_DIR.exists(), reason="dataset-fashion-mnist not installed")
def test_fashion_shards_fit_the_cnn():
    from apiary.core.data.fashion import load_fashion_shards

    shards = load_fashion_shards(seed=0, images=2000)
    assert list(shards) == ["site1", "site2", "site3", "site4", "site5"]
    assert sum(s.num_train + s.num_test for s in shards.values()) == 2000
    for shard in shards.values():
        assert shard.input_shape == (1, 28, 28) and shard.num_classes == 10
        assert shard.num_train > 0 and shard.num_test > 0
    model = build_model("cnn", (1, 28, 28), 10, seed=0)
    assert param_count(model) == 26_698
    assert block_count(26_698) == 7


def test_the_in_process_methods_report_a_step_each_with_the_time_left(tmp_path: Path):
    from apiary.tools.compare import CompareOptions, run_compare

    lines: list[str] = []
    result = run_compare(CompareOptions(seeds=2, rounds=1, epochs=1, workers=1,
                                        methods=("central", "fedavg"), out_dir=tmp_path),
                         lines.append)
    assert set(result["methods"]) == {"central", "fedavg"}
    steps = [line for line in lines if line.startswith("[")]
    assert steps[0].startswith("[0/4] ")
    assert steps[-1].startswith("[4/4] done in ")
    assert not (tmp_path / "heart").exists(), "no real run, no node directories"


@pytest.mark.slow
@pytest.mark.chain
def test_reduced_comparison_end_to_end(tmp_path: Path):
    json_path, figure = tmp_path / "heart.json", tmp_path / "heart.png"
    reply = CliRunner().invoke(app, [
        "compare", "--dataset", "heart", "--seeds", "1", "--rounds", "2",
        "--out", str(tmp_path / "runs"), "--json", str(json_path), "--figure", str(figure),
    ])
    assert reply.exit_code == 0, reply.output
    assert "FedAvg (plaintext)" in reply.output and "swarm (CKKS, chain)" in reply.output
    result = json.loads(json_path.read_text())
    methods = result["methods"]
    assert set(methods) == {"central", "local", "fedavg", "swarm", "federated"}
    hospitals = ["cleveland", "hungary", "switzerland", "va"]
    for entry in methods.values():
        cells = [entry["overall"], *(entry["per_node"][h] for h in hospitals)]
        for cell in cells:
            assert set(cell) == {"accuracy", "auc"}
            assert set(cell["accuracy"]) == {"mean", "std"}
            assert 0.0 <= cell["accuracy"]["mean"] <= 1.0
            assert cell["accuracy"]["std"] == 0.0
        assert 0.0 <= entry["overall"]["auc"]["mean"] <= 1.0
        assert entry["per_node"]["switzerland"]["auc"]["mean"] is None, "one-class test split"
    swarm, fedavg, federated = methods["swarm"], methods["fedavg"], methods["federated"]
    for key in ("overall", *hospitals):
        ours = swarm["overall"] if key == "overall" else swarm["per_node"][key]
        ref = fedavg["overall"] if key == "overall" else fedavg["per_node"][key]
        assert math.isclose(ours["accuracy"]["mean"], ref["accuracy"]["mean"], abs_tol=1e-3)
    assert np.allclose(swarm["curve"]["mean"], fedavg["curve"]["mean"], atol=1e-3)
    assert np.allclose(federated["curve"]["mean"], fedavg["curve"]["mean"], atol=1e-3)
    assert len(fedavg["curve"]["mean"]) == 2
    for mode in ("swarm", "federated"):
        checks = result["checks"][mode]
        assert checks["identical_weights_across_nodes"] and checks["all_hospitals_every_round"]
        assert checks["max_weight_diff"] < 1e-4
    data = figure.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
