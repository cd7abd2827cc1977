"""A server optimiser in a real swarm: node processes, anvil, gRPC, CKKS.

Three hospitals train with FedAdam (and FedProx). After every round all three hold bitwise
the same model and optimiser state; the model equals the in-process plaintext reference of
the same strategy within CKKS error; replaying the chain's aggregates rebuilds every round's
model and the saved state; a node killed and restarted catches up by replaying the rounds it
missed and is bitwise equal to the others again.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from web3 import Web3

from apiary.chain.binding import SwarmContract
from apiary.chain.devnet import dev_private_keys
from apiary.core.data.shards import Shard
from apiary.core.flat import weights_digest
from apiary.node.keys import KeyRing
from apiary.node.server_steps import STATE_FILE, replay
from apiary.tools.baselines import run_fedavg
from apiary.tools.demo import DemoOptions, LocalSwarm, run_demo

pytestmark = [pytest.mark.chain, pytest.mark.slow]

THREE = ("cleveland", "hungary", "va")
ROUNDS = 3
STRATEGY: dict[str, Any] = {"server_optimizer": "fedadam", "server_lr": 0.01,
                            "fedprox_mu": 0.01}


def _options(out: Path, rounds: int, **extra: Any) -> DemoOptions:
    return DemoOptions(mode="swarm", rounds=rounds, out_dir=out, admin_token="test-admin-token",
                       round_deadline_s=extra.pop("round_deadline_s", 20.0), **STRATEGY,
                       **extra)


def _records(swarm: LocalSwarm, name: str) -> dict[int, dict[str, Any]]:
    return {r["round"]: r for r in swarm.history(name)}


def _saved_state(swarm: LocalSwarm, name: str) -> dict[str, np.ndarray]:
    with np.load(swarm.state_dir(name) / STATE_FILE) as saved:
        return {k: saved[k] for k in saved.files}


@pytest.fixture(scope="module")
def fedadam_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    out = tmp_path_factory.mktemp("fedadam")
    with LocalSwarm(_options(out, ROUNDS), THREE) as swarm:
        swarm.found()
        nodes = swarm.start_all()
        swarm.wait_until(lambda: all(n.process.poll() is not None for n in nodes), 300,
                         f"{ROUNDS} fedadam rounds")
        assert all(n.process.returncode == 0 for n in nodes), [n.log_path for n in nodes]
        w3 = Web3(Web3.HTTPProvider(swarm.rpc_url))
        assert swarm.contract_address is not None
        contract = SwarmContract.at(w3, swarm.contract_address, dev_private_keys(1)[0])
        yield {"swarm": swarm, "contract": contract, "out": out}


def test_every_node_holds_the_same_model_and_state_after_every_round(fedadam_run):
    swarm: LocalSwarm = fedadam_run["swarm"]
    histories = {n: _records(swarm, n) for n in THREE}
    for round_number in range(1, ROUNDS + 1):
        digests = {histories[n][round_number]["weights_digest"] for n in THREE}
        assert len(digests) == 1, f"round {round_number}: {digests}"
    finals = [np.load(swarm.state_dir(n) / "global.npy") for n in THREE]
    assert all(f.tobytes() == finals[0].tobytes() for f in finals[1:])
    states = [_saved_state(swarm, n) for n in THREE]
    assert int(states[0]["round"]) == ROUNDS and str(states[0]["optimizer"]) == "fedadam"
    for state in states[1:]:
        assert all(state[k].tobytes() == states[0][k].tobytes() for k in ("m", "v", "round"))


def test_the_swarm_equals_the_plaintext_reference_of_the_same_strategy(fedadam_run):
    swarm: LocalSwarm = fedadam_run["swarm"]
    shards = {n: Shard.load(swarm.data[n]) for n in THREE}
    reference = run_fedavg(shards, _options(fedadam_run["out"], ROUNDS).training)
    final = np.load(swarm.state_dir("cleveland") / "global.npy")
    assert np.max(np.abs(final - reference.weights["global"])) < 1e-4
    assert not np.array_equal(final, reference.weights["global"]), "CKKS adds noise"
    # the reference scores on the union of these three hospitals' test splits
    for round_number, accuracy in enumerate(reference.curve, start=1):
        swarm_accuracy = _union_accuracy(swarm, shards, round_number)
        assert abs(accuracy - swarm_accuracy) <= 0.001, round_number


def _union_accuracy(swarm: LocalSwarm, shards: dict[str, Shard], round_number: int) -> float:
    """The accuracy of a round's model on the union of the three test splits: each node
    records its own split's accuracy, weighted here by the split's size."""
    records = {n: _records(swarm, n)[round_number] for n in THREE}
    sizes = {n: len(shards[n].y_test) for n in THREE}
    return sum(records[n]["accuracy"] * sizes[n] for n in THREE) / sum(sizes.values())


def test_replaying_the_chain_rebuilds_every_round_and_the_saved_state(fedadam_run):
    swarm: LocalSwarm = fedadam_run["swarm"]
    contract: SwarmContract = fedadam_run["contract"]
    params = contract.he_parameters()
    he = KeyRing(swarm.state_dir("hungary")).get(0)
    assert he is not None

    def average_of(round_number: int) -> np.ndarray:
        emitted = contract.aggregated_blocks(round_number)
        _, _, weight_sum = contract.round_weights(round_number)
        blocks = [emitted[i].coefficients for i in range(params.block_count)]
        return he.decrypt(blocks, params.param_count) / weight_sum

    training = _options(fedadam_run["out"], ROUNDS).training
    server = training.server_step()
    initial = _initial_weights(swarm, training)
    history = _records(swarm, "va")
    for through in range(1, ROUNDS + 1):
        weights, state = replay(server, initial, through, average_of)
        assert weights_digest(weights) == history[through]["weights_digest"], through
    saved = _saved_state(swarm, "va")
    assert state.m is not None and state.v is not None
    assert state.m.tobytes() == saved["m"].tobytes() and state.v.tobytes() == saved["v"].tobytes()


def _initial_weights(swarm: LocalSwarm, training: Any) -> np.ndarray:
    from apiary.node.trainer import LocalTrainer

    return LocalTrainer.for_shard("va", Shard.load(swarm.data["va"]), training).initial_weights()


def test_a_restarted_node_catches_up_by_replay_and_is_bitwise_equal_again(tmp_path: Path):
    opts = _options(tmp_path, 0, round_deadline_s=8.0, min_peers=2)
    with LocalSwarm(opts, THREE) as swarm:
        swarm.found()
        swarm.start_all()
        swarm.wait_until(lambda: 1 in _records(swarm, "va"), 120, "round 1 at va")
        swarm.kill("va")
        survivors = ("cleveland", "hungary")
        swarm.wait_until(lambda: all(3 in _records(swarm, n) for n in survivors), 180,
                         "rounds 2 and 3 without va")
        swarm.start("va")

        def rejoined() -> int | None:
            mine = [r for r in swarm.history("va") if r["committed"] and r["round"] >= 4]
            if mine and all(mine[0]["round"] in _records(swarm, n) for n in survivors):
                return int(mine[0]["round"])
            return None

        swarm.wait_until(lambda: rejoined() is not None, 240, "va to rejoin")
        round_number = rejoined()
        assert round_number is not None
        history = swarm.history("va")
        assert [r["round"] for r in history] == list(range(1, round_number + 1)), (
            "va adopts every round it missed, one after the other")
        caught_up = {r["round"] for r in history if not r["committed"]}
        assert {2, 3} <= caught_up
        for number in range(1, round_number + 1):
            digests = {_records(swarm, n)[number]["weights_digest"] for n in THREE}
            assert len(digests) == 1, f"round {number}"


def test_an_onboarded_hospital_rebuilds_the_state_and_stays_bitwise_equal(tmp_path: Path):
    """The newcomer is handed the model alone; it replays the chain's rounds to check the
    model and rebuild FedYogi's moments, then trains bitwise in step with the founders."""
    options = DemoOptions(rounds=5, out_dir=tmp_path, onboard=True, server_optimizer="fedyogi",
                          server_lr=0.02)
    result = run_demo(options, lambda _line: None)
    assert [r["round"] for r in result["rounds"]] == [1, 2, 3, 4, 5]
    assert "switzerland" in result["rounds"][-1]["node_accuracy"]
    assert all(r["identical_weights"] for r in result["rounds"])
    states = {}
    for name in ("cleveland", "switzerland"):
        with np.load(tmp_path / "state" / name / STATE_FILE) as saved:
            states[name] = {k: saved[k].tobytes() for k in saved.files}
    assert states["cleveland"] == states["switzerland"]
