"""The founding ceremony — `apiary found` driving the founders' nodes — and `apiary sample-data`.

Every founder's node makes its own keys; the deployer holds only its own funded key, the
founders' admin API URLs and their token, and writes nothing private.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from web3 import Web3

from apiary.chain.binding import SwarmContract
from apiary.chain.devnet import Devnet, dev_private_keys
from apiary.cli import app
from apiary.core.data.shards import Shard
from apiary.core.flat import weights_digest
from apiary.core.he import HEContext
from apiary.core.keywrap import wrap, wrap_context
from apiary.core.settings import FoundingSettings
from apiary.core.tasks import SwarmConfig, TaskIdentity
from apiary.core.tls import create_self_signed
from apiary.node.client import AdminClient
from apiary.node.founder import FoundingError, found
from apiary.node.founding import FoundingCeremony, KeyDelivery, SwarmAssignment, found_swarm
from apiary.node.identity import Identity, ensure_identity
from apiary.node.invites import Refused
from apiary.node.keys import KeyRing
from apiary.node.runtime import connect
from apiary.tools.demo import DemoOptions, LocalSwarm
from tests.test_onboarding import leaks, secret_key_fragments

TOKEN = "found-test-token"
PARAMS = 1074
DATASET_SIZE = 303
TRAINING = SwarmConfig(TaskIdentity("heart", "1", "a" * 64, "b" * 64, PARAMS),
                       {"epochs": 2, "lr": 0.003, "batch_size": 16, "seed": 0})


def settings(tmp_path: Path, rpc_url: str, **extra: object) -> FoundingSettings:
    values: dict[str, object] = {
        "rpc_url": rpc_url, "founding_members": "alpha=http://127.0.0.1:1,beta=http://127.0.0.1:2",
        "swarm_dir": tmp_path / "swarm", "chain_wait_s": 5, "node_wait_s": 1,
        "admin_token": TOKEN,
    }
    return FoundingSettings(**{**values, **extra})


def test_bad_member_lists_are_refused_before_touching_the_chain(tmp_path: Path) -> None:
    with pytest.raises(FoundingError, match=r"expected name=http://host:port"):
        found(settings(tmp_path, "http://127.0.0.1:1", founding_members="alpha"), print)
    with pytest.raises(FoundingError, match="expected name=http"):
        found(settings(tmp_path, "http://127.0.0.1:1", founding_members="a=a:50051"), print)
    with pytest.raises(FoundingError, match="1 founding member"):
        found(settings(tmp_path, "http://127.0.0.1:1", founding_members="a=http://a:1"), print)


@pytest.mark.chain
def test_founders_whose_apis_do_not_answer_are_an_error(devnet: Devnet,
                                                        tmp_path: Path) -> None:
    with pytest.raises(FoundingError,
                       match=r"alpha's admin API at http://127\.0\.0\.1:1 did not"):
        found(settings(tmp_path, devnet.rpc_url), print)
    assert not (tmp_path / "swarm").exists()


@pytest.mark.chain
def test_a_swarm_file_naming_a_contract_the_chain_lacks_is_an_error(
    devnet: Devnet, tmp_path: Path
) -> None:
    config = settings(tmp_path, devnet.rpc_url)
    config.swarm_dir.mkdir()
    (config.swarm_dir / "swarm.json").write_text(json.dumps(
        {"contract": "0x" + "12" * 20, "param_count": PARAMS}))
    with pytest.raises(FoundingError, match="which this chain does not hold"):
        found(config, print)


# ---------------------------------------------------------------------- the node's side


@dataclass
class Founder:
    """One founder's side of the ceremony in this process, on the real devnet."""

    ceremony: FoundingCeremony
    entered: bool = False

    @property
    def identity(self) -> Identity:
        return self.ceremony.identity


def founder(state_dir: Path, name: str, port: int) -> Founder:
    identity, tls = ensure_identity(state_dir, name, f"127.0.0.1:{port}")
    holder: list[Founder] = []

    def enter() -> None:
        holder[0].entered = True

    ceremony = FoundingCeremony(
        name=name, state_dir=state_dir, endpoint=f"127.0.0.1:{port}", identity=identity,
        tls=tls, keys=KeyRing(state_dir), param_count=PARAMS, dataset_size=DATASET_SIZE,
        training=TRAINING, connect=connect, enter=enter,
        entered=lambda: holder[0].entered,
    )
    holder.append(Founder(ceremony))
    return holder[0]


@pytest.mark.chain
def test_each_founder_checks_its_swarm_and_its_key_against_the_chain(
    devnet: Devnet, w3: Web3, dev_keys: list[str], tmp_path: Path
) -> None:
    alpha, beta = founder(tmp_path / "alpha", "alpha", 1), founder(tmp_path / "beta", "beta", 2)
    created = alpha.ceremony.create_key()
    assert alpha.ceremony.create_key() == created, "a retry answers the same key"
    he = HEContext.from_bytes(base64.b64decode(created.public_context))
    assert not he.has_secret_key and created.digest == "0x" + he.public_digest().hex()
    assert not beta.ceremony.keys.has(0)

    listed_wrongly = beta.ceremony.public_identity().model_copy(
        update={"tls_certificate": create_self_signed("beta", ["127.0.0.1"]).cert.decode()})
    wrong = found_swarm(w3, dev_keys[0], he, PARAMS,
                        [alpha.ceremony.public_identity(), listed_wrongly], min_peers=2,
                        training=TRAINING)
    with pytest.raises(Refused, match="another TLS certificate") as refused:
        beta.ceremony.join_swarm(SwarmAssignment(contract=wrong.address,
                                                 rpc_url=devnet.rpc_url,
                                                 training=TRAINING.as_json()))
    assert refused.value.http_status == 409
    assert not (tmp_path / "beta" / "swarm.json").exists()

    faster = SwarmConfig(TRAINING.task, {**TRAINING.training, "lr": 0.01})
    other_lr = found_swarm(w3, dev_keys[0], he, PARAMS,
                           [alpha.ceremony.public_identity(), beta.ceremony.public_identity()],
                           min_peers=2, training=faster)
    for given, words in ((faster, "lr: this node 0.003, the swarm 0.01"),
                         (TRAINING, "not the one the contract")):
        with pytest.raises(Refused, match=words) as refused:
            beta.ceremony.join_swarm(SwarmAssignment(contract=other_lr.address,
                                                     rpc_url=devnet.rpc_url,
                                                     training=given.as_json()))
        assert refused.value.http_status == 409
        assert not (tmp_path / "beta" / "swarm.json").exists()

    contract = found_swarm(w3, dev_keys[0], he, PARAMS,
                           [alpha.ceremony.public_identity(), beta.ceremony.public_identity()],
                           min_peers=2, training=TRAINING)
    assert contract.training_digest() == TRAINING.digest()
    assignment = SwarmAssignment(contract=contract.address, rpc_url=devnet.rpc_url,
                                 training=TRAINING.as_json())
    assert alpha.ceremony.join_swarm(assignment).state == "member" and alpha.entered
    assert beta.ceremony.join_swarm(assignment).state == "awaiting key" and not beta.entered
    with pytest.raises(Refused, match="in the swarm of contract"):
        beta.ceremony.join_swarm(SwarmAssignment(contract=wrong.address,
                                                 rpc_url=devnet.rpc_url,
                                                 training=TRAINING.as_json()))
    with pytest.raises(Refused, match="in the swarm of contract"):
        alpha.ceremony.create_key()
    stored_file = json.loads((tmp_path / "beta" / "swarm.json").read_text())
    assert stored_file["training"] == TRAINING.as_json()

    sealed = alpha.ceremony.wrap_keys()
    assert [k.address for k in sealed.keys] == [beta.identity.address]
    aad = wrap_context(contract.address, beta.identity.address, 0)
    secret = KeyRing(tmp_path / "alpha").get(0)
    assert secret is not None
    to_alpha = wrap(secret.secret_bytes(), bytes.fromhex(alpha.identity.x25519_public), aad)
    not_the_swarms = wrap(HEContext.create().secret_bytes(),
                          bytes.fromhex(beta.identity.x25519_public), aad)
    for bad, words in ((to_alpha, "does not open"), (not_the_swarms, "does not match")):
        with pytest.raises(Refused, match=words) as refused:
            beta.ceremony.accept_key(KeyDelivery(epoch=0, wrapped=bad.to_json()))
        assert refused.value.http_status == 422
        assert not beta.ceremony.keys.has(0) and not beta.entered
    status = beta.ceremony.accept_key(KeyDelivery(epoch=0, wrapped=sealed.keys[0].wrapped))
    assert status.state == "member" and beta.entered
    stored = KeyRing(tmp_path / "beta").get(0)
    assert stored is not None and stored.public_digest() == contract.key_epoch(0)[1]


# ---------------------------------------------------------------------- over node processes


def snapshot(root: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def node_secrets(state_dir: Path) -> list[bytes]:
    """The private halves a node made: its Ethereum and X25519 keys (hex, as stored) and its
    TLS key (the scalar in hex, and the part of the PEM body that encodes it)."""
    identity = Identity.load(state_dir)
    assert identity is not None
    pem = (state_dir / "tls" / "node.key").read_bytes()
    tls_key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(tls_key, ec.EllipticCurvePrivateKey)
    body = b"".join(pem.splitlines()[1:-1])
    return [identity.private_key.removeprefix("0x").encode(),
            identity.x25519_private.encode(),
            f"{tls_key.private_numbers().private_value:064x}".encode(), body[48:90]]


def holds_any(data: bytes, secrets: list[bytes]) -> bool:
    return b"PRIVATE KEY" in data or any(s in data for s in secrets)


@pytest.mark.chain
@pytest.mark.slow
def test_apiary_found_founds_running_nodes_and_writes_no_private_key(tmp_path: Path) -> None:
    names = ("cleveland", "hungary", "va")
    options = DemoOptions(rounds=2, out_dir=tmp_path / "run", admin_token=TOKEN,
                          round_deadline_s=10.0, min_peers=2)
    with LocalSwarm(options, names) as local:
        local.start_founders()
        state_root = local.out / "state"
        config = local.founding_settings()
        with AdminClient(local.nodes["hungary"].api_url) as hungary_api:
            hungary = hungary_api.identity().address
        founder_dir = tmp_path / "founder"
        founder_dir.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith("APIARY_")}
        env.update({
            "APIARY_RPC_URL": config.rpc_url, "APIARY_FOUNDING_MEMBERS": config.founding_members,
            "APIARY_ADMIN_TOKEN": TOKEN, "APIARY_SWARM_DIR": "swarm",
            "APIARY_DATASET": config.dataset, "APIARY_MIN_PEERS": "2",
            "APIARY_ENROL_WINDOW_S": "10", "APIARY_COMMIT_WINDOW_S": "10",
        })
        before, started = snapshot(tmp_path), time.time()
        run = subprocess.run([sys.executable, "-m", "apiary.cli", "found", "--admin", hungary],
                             cwd=founder_dir, env=env, capture_output=True, timeout=240)
        assert run.returncode == 0, run.stdout.decode() + run.stderr.decode()
        after = snapshot(tmp_path)

        written = {p for p, seen in after.items() if before.get(p) != seen
                   and state_root not in p.parents and local.out / "logs" not in p.parents}
        swarm_dir = founder_dir / "swarm"
        assert written == {swarm_dir / "swarm.json", swarm_dir / "he-public.ctx"}
        secrets = {n: node_secrets(state_root / n) for n in names}
        fragments = secret_key_fragments(KeyRing(state_root / "cleveland").get(0))
        everyone = [s for n in names for s in secrets[n]]
        for path in written:
            assert not holds_any(path.read_bytes(), everyone), path
            assert not leaks(path.read_bytes(), fragments), path
        output = run.stdout + run.stderr
        assert not holds_any(output, everyone) and not leaks(output, fragments)
        assert not HEContext.from_bytes((swarm_dir / "he-public.ctx").read_bytes()).has_secret_key

        for name in names:
            own = state_root / name
            for private in (own / "identity.json", own / "tls" / "node.key"):
                assert private.stat().st_mtime < started, f"{private} predates the founder"
                assert private.stat().st_mode & 0o077 == 0
            assert (own / "he-secret.ctx").stat().st_mode & 0o077 == 0
            for path in tmp_path.rglob("*"):
                if path.is_file() and own not in path.parents:
                    assert not any(s in path.read_bytes() for s in secrets[name]), \
                        f"{name}'s private key is in {path}"
        for name in names[1:]:
            delivered = (state_root / name / "he-secret.ctx").stat().st_mtime
            assert delivered >= started, "a non-first founder got the HE key in the ceremony"

        record = json.loads((swarm_dir / "swarm.json").read_text())
        w3 = Web3(Web3.HTTPProvider(local.rpc_url))
        contract = SwarmContract.at(w3, record["contract"], dev_private_keys(1)[0])
        assert contract.admin() == hungary and contract.pending_admin() is None
        assert SwarmConfig.from_json(record["training"]).digest() == contract.training_digest()
        assert record["training_digest"] == "0x" + contract.training_digest().hex()
        assert record["admin"] == hungary
        addresses = {m["name"]: m["address"] for m in record["members"]}
        for name in names:
            registered = contract.member(addresses[name])
            assert registered.active
            assert registered.tls_certificate == (state_root / name / "tls" / "node.pem"
                                                  ).read_bytes()

        nodes = list(local.nodes.values())
        local.wait_until(lambda: all(n.process.poll() is not None for n in nodes), 180,
                         "two rounds")
        assert all(n.process.returncode == 0 for n in nodes), [n.log_path for n in nodes]
        key = KeyRing(state_root / "hungary").get(0)
        assert key is not None
        params = contract.he_parameters()
        for round_number in (1, 2):
            digests = {r["weights_digest"] for n in names for r in local.history(n)
                       if r["round"] == round_number}
            emitted = contract.aggregated_blocks(round_number)
            _, _, weight_sum = contract.round_weights(round_number)
            blocks = [emitted[i].coefficients for i in range(params.block_count)]
            model = key.decrypt(blocks, params.param_count) / weight_sum
            assert digests == {weights_digest(model)}, f"round {round_number}"
            assert set(contract.participants(round_number)) == set(addresses.values())
        relayed = w3.eth.get_transaction(emitted[0].transaction_hash)
        _, arguments = contract.contract.decode_function_input(relayed["input"])
        # aggregateBlocks: ciphertexts[k] are the participants' ciphertexts of one block.
        one = key.decrypt([bytes(arguments["ciphertexts"][0][0])], params.param_count)
        assert np.median(np.abs(one)) > 1e3, "a single update on chain decrypts to noise"
        finals = [np.load(state_root / n / "global.npy") for n in names]
        assert all(np.array_equal(finals[0], f) for f in finals[1:])

        again = subprocess.run([sys.executable, "-m", "apiary.cli", "found"], cwd=founder_dir,
                               env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and "nothing to do" in again.stdout
        assert snapshot(founder_dir) == {p: s for p, s in after.items()
                                         if founder_dir in p.parents}


def test_sample_data_writes_one_hospitals_shard(tmp_path: Path) -> None:
    path = tmp_path / "data" / "va.csv"
    result = CliRunner().invoke(app, ["sample-data", "--hospital", "va", "--data", str(path)])
    assert result.exit_code == 0, result.output
    shard = Shard.load(path)
    assert shard.name == "va" and len(shard.y_train) + len(shard.y_test) == 130
    refused = CliRunner().invoke(app, ["sample-data", "--hospital", "mayo",
                                       "--data", str(path)])
    assert refused.exit_code != 0 and "unknown hospital 'mayo'" in refused.output
