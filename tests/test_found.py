"""`apiary found` (the compose founder) and `apiary sample-data` (each hospital's shard)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from web3 import Web3

from apiary.chain.binding import SwarmContract
from apiary.chain.devnet import Devnet
from apiary.cli import app
from apiary.core.data.shards import Shard
from apiary.core.he import HEContext
from apiary.core.settings import FoundingSettings
from apiary.node.founder import FoundingError, found

NODE_UID = 4242


def settings(tmp_path: Path, rpc_url: str, **extra: object) -> FoundingSettings:
    values: dict[str, object] = {
        "rpc_url": rpc_url, "founding_members": "alpha=alpha:50051,beta=beta:50051",
        "state_root": tmp_path / "state", "swarm_dir": tmp_path / "swarm", "chain_wait_s": 5,
    }
    return FoundingSettings(**{**values, **extra})


def test_bad_member_lists_are_refused_before_touching_the_chain(tmp_path: Path) -> None:
    with pytest.raises(FoundingError, match="expected name=host:port"):
        found(settings(tmp_path, "http://127.0.0.1:1", founding_members="alpha"), print)
    with pytest.raises(FoundingError, match="1 founding member"):
        found(settings(tmp_path, "http://127.0.0.1:1", founding_members="a=a:1"), print)


@pytest.mark.chain
def test_found_sets_up_each_member_and_a_contract_once(devnet: Devnet, w3: Web3,
                                                       tmp_path: Path) -> None:
    config = settings(tmp_path, devnet.rpc_url)
    config.state_root.mkdir()
    if os.geteuid() == 0:
        os.chown(config.state_root, NODE_UID, NODE_UID)
    founded = found(config, print)
    assert founded.param_count == 1074 and not founded.already

    alpha, beta = (config.state_root / n for n in ("alpha", "beta"))
    identities = {}
    for member in (alpha, beta):
        identities[member.name] = json.loads((member / "identity.json").read_text())
        assert json.loads((member / "swarm.json").read_text())["contract"] == founded.contract
        assert HEContext.from_bytes((member / "he-secret.ctx").read_bytes()).has_secret_key
        assert (member / "tls" / "node.pem").exists()
        if os.geteuid() == 0:
            assert {p.stat().st_uid for p in [member, *member.rglob("*")]} == {NODE_UID}
    assert (alpha / "tls" / "ca.key").exists() and not (beta / "tls" / "ca.key").exists()

    contract = SwarmContract.at(w3, founded.contract, identities["alpha"]["private_key"])
    assert contract.he_parameters().param_count == 1074
    assert contract.admin() == identities["alpha"]["address"]
    assert {m.address for m in contract.members()} == {i["address"] for i in
                                                       identities.values()}
    assert w3.eth.get_balance(identities["beta"]["address"]) > 0

    public = json.loads((config.swarm_dir / "swarm.json").read_text())
    assert public["contract"] == founded.contract
    assert [m["endpoint"] for m in public["members"]] == ["alpha:50051", "beta:50051"]
    assert not HEContext.from_bytes((config.swarm_dir / "he-public.ctx").read_bytes()) \
        .has_secret_key

    again = found(config, print)
    assert again.already and again.contract == founded.contract
    with pytest.raises(FoundingError, match="already hold a member's keys"):
        found(settings(tmp_path, devnet.rpc_url, swarm_dir=tmp_path / "other"), print)


@pytest.mark.chain
def test_a_swarm_file_naming_a_contract_the_chain_lacks_is_an_error(
    devnet: Devnet, tmp_path: Path
) -> None:
    config = settings(tmp_path, devnet.rpc_url)
    config.swarm_dir.mkdir()
    (config.swarm_dir / "swarm.json").write_text(json.dumps(
        {"contract": "0x" + "12" * 20, "param_count": 1074}))
    with pytest.raises(FoundingError, match="which this chain does not hold"):
        found(config, print)


def test_sample_data_writes_one_hospitals_shard(tmp_path: Path) -> None:
    path = tmp_path / "data" / "va.csv"
    result = CliRunner().invoke(app, ["sample-data", "--hospital", "va", "--data", str(path)])
    assert result.exit_code == 0, result.output
    shard = Shard.load(path)
    assert shard.name == "va" and len(shard.y_train) + len(shard.y_test) == 130
    refused = CliRunner().invoke(app, ["sample-data", "--hospital", "mayo",
                                       "--data", str(path)])
    assert refused.exit_code != 0 and "unknown hospital 'mayo'" in refused.output
