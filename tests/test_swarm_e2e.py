"""End to end: hospital node processes, a real anvil devnet, real gRPC, real CKKS.

Three of the Heart Disease hospitals run as separate `apiary node` processes, founded by
the ceremony: each made its own keys, the first created the swarm's HE key.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from web3 import Web3

from apiary.chain.binding import SwarmContract
from apiary.chain.devnet import dev_private_keys
from apiary.core.data.shards import Shard
from apiary.core.flat import load_flat, weights_digest
from apiary.core.models import build_model
from apiary.core.training import evaluate
from apiary.node.client import AdminClient
from apiary.node.keys import KeyRing
from apiary.tools.demo import DemoOptions, LocalSwarm

pytestmark = [pytest.mark.chain, pytest.mark.slow]

THREE = ("cleveland", "hungary", "va")
TOKEN = "test-admin-token"


def options(out: Path, mode: str, rounds: int, **extra: Any) -> DemoOptions:
    return DemoOptions(mode=mode, rounds=rounds, out_dir=out, admin_token=TOKEN,
                       round_deadline_s=extra.pop("round_deadline_s", 20.0), **extra)


def finished(swarm: LocalSwarm, names: tuple[str, ...], round_number: int) -> bool:
    return all(any(r["round"] == round_number for r in swarm.history(n)) for n in names)


def record(swarm: LocalSwarm, name: str, round_number: int) -> dict[str, Any]:
    return next(r for r in swarm.history(name) if r["round"] == round_number)


@pytest.fixture(scope="module")
def swarm_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A 3-node swarm that runs 3 rounds and exits; the chain stays up for inspection."""
    out = tmp_path_factory.mktemp("swarm")
    with LocalSwarm(options(out, "swarm", 3), THREE) as swarm:
        swarm.found()
        nodes = swarm.start_all()
        swarm.wait_until(lambda: all(n.process.poll() is not None for n in nodes), 240,
                         "three rounds")
        assert all(n.process.returncode == 0 for n in nodes), [n.log_path for n in nodes]
        w3 = Web3(Web3.HTTPProvider(swarm.rpc_url))
        assert swarm.contract_address is not None
        contract = SwarmContract.at(w3, swarm.contract_address, dev_private_keys(1)[0])
        yield {"swarm": swarm, "contract": contract}


def test_three_rounds_give_identical_weights_equal_to_the_onchain_aggregate(swarm_run):
    swarm: LocalSwarm = swarm_run["swarm"]
    contract: SwarmContract = swarm_run["contract"]
    assert contract.last_finalized_round() == 3
    params = contract.he_parameters()
    for round_number in (1, 2, 3):
        emitted = contract.aggregated_blocks(round_number)
        _, _, weight_sum = contract.round_weights(round_number)
        blocks = [emitted[i].coefficients for i in range(params.block_count)]
        he = KeyRing(swarm.state_dir("hungary")).get(0)
        assert he is not None
        decrypted = he.decrypt(blocks, params.param_count) / weight_sum
        expected = weights_digest(decrypted)
        digests = {record(swarm, n, round_number)["weights_digest"] for n in THREE}
        assert digests == {expected}, f"round {round_number}"
        assert set(contract.participants(round_number)) == {swarm.addresses[n] for n in THREE}
    finals = [np.load(swarm.state_dir(n) / "global.npy") for n in THREE]
    assert all(np.array_equal(finals[0], f) for f in finals[1:])


def test_heldout_accuracy_after_the_last_round_beats_round_zero(swarm_run):
    swarm: LocalSwarm = swarm_run["swarm"]
    heldout = Shard.load(swarm.heldout_path)
    initial = build_model("mlp", heldout.input_shape, heldout.num_classes, seed=0)
    round_zero = evaluate(initial, heldout.x_test, heldout.y_test).accuracy
    final = record(swarm, "cleveland", 3)["heldout_accuracy"]
    assert final > round_zero
    model = build_model("mlp", heldout.input_shape, heldout.num_classes, seed=0)
    load_flat(model, np.load(swarm.state_dir("va") / "global.npy"))
    assert evaluate(model, heldout.x_test, heldout.y_test).accuracy == pytest.approx(final)


def test_federated_run_matches_the_swarm_run(swarm_run, tmp_path: Path):
    swarm: LocalSwarm = swarm_run["swarm"]
    with LocalSwarm(options(tmp_path, "federated", 3), THREE) as federated:
        federated.found()
        nodes = federated.start_all()
        federated.wait_until(lambda: all(n.process.poll() is not None for n in nodes), 240,
                             "three federated rounds")
        assert all(n.process.returncode == 0 for n in nodes)
        fed = [np.load(federated.state_dir(n) / "global.npy") for n in THREE]
    assert all(np.array_equal(fed[0], f) for f in fed[1:])
    swarm_weights = np.load(swarm.state_dir("cleveland") / "global.npy")
    assert np.max(np.abs(fed[0] - swarm_weights)) < 1e-4
    assert not np.array_equal(fed[0], swarm_weights), "independent encryptions differ in noise"


def test_killed_node_is_left_out_then_catches_up_and_rejoins(tmp_path: Path):
    opts = options(tmp_path, "swarm", 0, round_deadline_s=8.0, min_peers=2)
    with LocalSwarm(opts, THREE) as swarm:
        swarm.found()
        swarm.start_all()
        swarm.wait_until(lambda: finished(swarm, ("va",), 1), 120, "round 1 at va")
        swarm.kill("va")
        survivors = ("cleveland", "hungary")
        swarm.wait_until(lambda: finished(swarm, survivors, 2), 120, "round 2 without va")
        w3 = Web3(Web3.HTTPProvider(swarm.rpc_url))
        assert swarm.contract_address is not None
        contract = SwarmContract.at(w3, swarm.contract_address, dev_private_keys(1)[0])
        assert len(contract.participants(2)) >= 2
        check_admin_api(swarm, "cleveland")

        swarm.start("va")

        def rejoined() -> bool:
            mine = [r for r in swarm.history("va") if r["committed"] and r["round"] >= 3]
            return bool(mine) and finished(swarm, survivors, mine[0]["round"])

        swarm.wait_until(rejoined, 180, "va to rejoin")
        joined = next(r for r in swarm.history("va") if r["committed"] and r["round"] >= 3)
        round_number = joined["round"]
        assert swarm.addresses["va"] in contract.participants(round_number)
        digests = {record(swarm, n, round_number)["weights_digest"] for n in THREE}
        assert len(digests) == 1
        caught_up = [r["round"] for r in swarm.history("va") if not r["committed"]]
        assert caught_up and min(caught_up) >= 2, "va should catch up from the chain"


def check_admin_api(swarm: LocalSwarm, name: str) -> None:
    url = swarm.nodes[name].api_url
    with AdminClient(url, TOKEN) as client:
        before = client.rounds()
        assert client.health().node == name
        # Missing, wrong and malformed tokens, a wrong method: the server's answers, raw.
        for path in ("/v1/status", "/v1/rounds", "/v1/model"):
            assert httpx.get(f"{url}{path}").status_code == 401
            wrong = httpx.get(f"{url}{path}", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and "token" in wrong.json()["detail"]
            basic = httpx.get(f"{url}{path}", headers={"Authorization": "Basic x"})
            assert basic.status_code == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        assert httpx.post(f"{url}/v1/rounds", headers=good).status_code == 405
        status = client.status()
        assert status.mode == "swarm" and status.node == name
        assert len(status.members) == 3
        model = client.model()
        assert model.params == swarm.params
        assert model.weights_digest is not None and len(model.weights_digest) == 64
        assert model.round >= 2 and model.evaluation is not None
        assert model.evaluation.accuracy is not None and model.evaluation.accuracy > 0.5
        metrics = httpx.get(f"{url}/metrics").text
        assert "apiary_round" in metrics and "apiary_phase_seconds" in metrics
        after = client.rounds()
        assert after.rounds[: len(before.rounds)] == before.rounds
