"""The devnet keeps the swarm's chain across restarts, even after kill -9."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from apiary.chain.binding import SwarmContract
from apiary.chain.devnet import STATE_INTERVAL_S, Devnet, dev_private_keys, running_devnet
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
