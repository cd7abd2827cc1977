"""The devnet keeps the swarm's chain across restarts, even after kill -9."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from apiary.chain.binding import SwarmContract
from apiary.chain.devnet import (
    STATE_INTERVAL_S,
    Devnet,
    dev_private_keys,
    keep_good_state,
    restore_good_state,
    running_devnet,
)
from apiary.core.he import HEContext
from apiary.core.settings import ChainSettings


def test_a_killed_devnet_comes_back_with_the_contract_on_it(tmp_path: Path,
                                                              he: HEContext) -> None:
    state = tmp_path / "devnet" / "state.json"
    settings = ChainSettings.load(devnet_state=state)
    admin_key = dev_private_keys(1)[0]
    with running_devnet(settings) as chain:
        contract = SwarmContract.deploy(
            chain.web3(), admin_key, param_count=10, modulus=he.modulus, min_peers=1,
            context_digest=he.public_digest(), membership="admin", enrol_window_s=60,
            commit_window_s=60,
        )
        time.sleep(STATE_INTERVAL_S + 1.5)
        assert chain.process is not None
        chain.process.send_signal(signal.SIGKILL)
        chain.process.wait()
        port = chain.settings.devnet_port
    assert state.exists()
    again = settings.model_copy(update={"devnet_port": port})
    with Devnet(again) as chain:
        w3 = chain.web3()
        assert w3.eth.get_code(contract.address), "the contract survived the restart"
        revived = SwarmContract.at(w3, contract.address, admin_key)
        assert revived.current_round() == 1 and revived.admin() == contract.sender


def test_without_a_state_file_the_devnet_keeps_nothing() -> None:
    assert "--state" not in Devnet(ChainSettings.load()).command()


def test_history_is_bounded_by_the_settings() -> None:
    command = Devnet(ChainSettings.load(devnet_keep_blocks=500, devnet_keep_states=16)).command()
    assert command[command.index("--transaction-block-keeper") + 1] == "500"
    assert command[command.index("--prune-history") + 1] == "16"
    unbounded = Devnet(ChainSettings.load(devnet_keep_blocks=0, devnet_keep_states=0)).command()
    assert "--transaction-block-keeper" not in unbounded and "--prune-history" not in unbounded


def test_a_state_file_truncated_mid_write_is_replaced_by_the_last_good_copy(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state.json"
    state.write_text('{"block": {"number": 7}}')
    assert keep_good_state(state)
    assert not keep_good_state(state), "unchanged: no new copy"
    state.write_text('{"block": {"numb')  # a kill -9 in the middle of anvil's write
    assert not keep_good_state(state), "a file that does not parse is never kept"
    assert restore_good_state(state)
    assert json.loads(state.read_text()) == {"block": {"number": 7}}
    assert (tmp_path / "state.json.bad").read_text() == '{"block": {"numb'
    assert not restore_good_state(state), "a good file is left alone"


def test_with_no_good_copy_a_broken_state_file_is_left_for_anvil_to_refuse(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state.json"
    state.write_text("{")
    assert not restore_good_state(state)
    assert state.read_text() == "{" and not (tmp_path / "state.json.bad").exists()
