"""A task from a test file in a real swarm, and the swarm-wide training configuration: node
processes, a real devnet, the founding ceremony; nodes that train otherwise are refused."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from web3 import Web3

from apiary.chain.binding import SwarmContract
from apiary.chain.devnet import dev_private_keys
from apiary.core.tasks import SwarmConfig
from apiary.node.client import AdminClient
from apiary.node.identity import Identity
from apiary.node.keys import KeyRing
from apiary.tools.demo import DemoOptions, LocalSwarm

pytestmark = [pytest.mark.chain, pytest.mark.slow]

TINY = str(Path(__file__).parent / "tasks" / "tiny_task.py")
THREE = ("cleveland", "hungary", "va")
NEWCOMER = "switzerland"
TOKEN = "tasks-admin-token"


def rounds_done(swarm: LocalSwarm, name: str) -> list[int]:
    return [r["round"] for r in swarm.history(name) if r.get("status", "ok") != "rejected"]


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSwarm]:
    """Three founders running the test file's task, with two rounds done; they go on."""
    options = DemoOptions(rounds=0, out_dir=tmp_path_factory.mktemp("tasks"),
                          admin_token=TOKEN, round_deadline_s=10.0, min_peers=2, model=TINY)
    with LocalSwarm(options, (*THREE, NEWCOMER), joiners=(NEWCOMER,)) as local:
        local.found()
        local.start_all()
        local.wait_until(lambda: all(2 in rounds_done(local, n) for n in THREE), 240,
                         "two rounds")
        yield local


def contract_of(swarm: LocalSwarm) -> SwarmContract:
    assert swarm.contract_address is not None and swarm.rpc_url is not None
    w3 = Web3(Web3.HTTPProvider(swarm.rpc_url))
    return SwarmContract.at(w3, swarm.contract_address, dev_private_keys(1)[0])


def test_a_task_from_a_test_file_trains_in_a_three_node_swarm(swarm: LocalSwarm) -> None:
    contract = contract_of(swarm)
    record = json.loads((swarm.out / "swarm" / "swarm.json").read_text())
    founded = SwarmConfig.from_json(record["training"])
    assert founded.task.name == "tiny" and founded.task.parameters == 15 * 6 + 6 + 6 * 2 + 2
    assert contract.training_digest() == founded.digest()
    assert contract.he_parameters().param_count == founded.task.parameters
    for name in THREE:
        with AdminClient(swarm.nodes[name].api_url, TOKEN) as client:
            assert client.training().config == founded.as_json()
        own = json.loads((swarm.state_dir(name) / "swarm.json").read_text())
        assert own["training"] == founded.as_json()
    for round_number in (1, 2):
        records = [next(r for r in swarm.history(n) if r["round"] == round_number)
                   for n in THREE]
        assert len({r["weights_digest"] for r in records}) == 1, f"round {round_number}"
        assert all(math.isfinite(r["accuracy"]) for r in records)
        taking_part = set(contract.participants(round_number))
        assert len(taking_part) >= 2 and taking_part <= {swarm.addresses[n] for n in THREE}


@pytest.mark.parametrize("flags, named", [
    (["--lr", "0.01"], "lr: this node 0.01, the swarm 0.003"),
    (["--seed", "5"], "seed: this node 5, the swarm 0"),
    (["--task", f"{TINY}:wide"], "task architecture: this node"),
    (["--task", "heart"], "task: this node heart, the swarm tiny"),
])
def test_a_member_that_trains_otherwise_is_refused_at_start(
        swarm: LocalSwarm, flags: list[str], named: str) -> None:
    va = swarm.nodes["va"]
    if va.process.poll() is None:
        swarm.kill("va")
    held = rounds_done(swarm, "va")
    restarted = swarm.start("va", flags)
    code = restarted.process.wait(timeout=120)
    output = restarted.log_path.read_text()
    assert code == 2, output
    assert named in output and "differs from the swarm's" in output
    assert "Traceback" not in output
    assert rounds_done(swarm, "va") == held


def test_a_newcomer_with_another_task_is_refused_before_it_gets_the_key(
        swarm: LocalSwarm) -> None:
    contract = contract_of(swarm)
    members = contract.members()
    with AdminClient(swarm.nodes["cleveland"].api_url, TOKEN) as sponsor:
        invite = sponsor.create_invite(600).invite
    sponsor_url = swarm.nodes["cleveland"].api_url
    newcomer = swarm.start(NEWCOMER, ["--task", "heart", "--join", sponsor_url,
                                      "--invite", invite])
    code = newcomer.process.wait(timeout=180)
    output = newcomer.log_path.read_text()
    assert code == 2, output
    assert "the sponsor refused (409)" in output
    assert "task: the newcomer heart, the swarm tiny" in output
    state = swarm.state_dir(NEWCOMER)
    identity = Identity.load(state)
    assert identity is not None
    assert not KeyRing(state).has(0) and not list(state.rglob("*.ctx")), "no HE key"
    assert not (state / "swarm.json").exists()
    assert contract.members() == members
    assert not contract.member(identity.address).active
