"""Typed Python binding of SwarmLearning: deploy, every call, events, readable errors.

Every transaction is simulated first (``eth_estimateGas``); a revert is decoded from the
contract's custom errors and raised as :class:`ContractRejected` before anything is sent,
so a rejected call never reaches the chain.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_abi.exceptions import DecodingError
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import function_signature_to_4byte_selector, to_checksum_address
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError
from web3.types import TxParams, TxReceipt

from apiary.chain.compiler import load_artifact
from apiary.core.errors import ApiaryError
from apiary.core.tls import certificate_name

GAS_HEADROOM = 1.1
MEMBERSHIP_RULES = ("admin", "majority")
RECEIPT_POLL_SECONDS = 0.01
MAX_BATCH_GAS = 200_000_000
"""Most gas one `aggregateBlocks` transaction may be given (on the devnet, whose blocks take
1e9 gas): ~7 blocks of 5 members; beyond it, the larger JSON-RPC bodies cost more time than
the fewer transactions save."""
BLOCK_FIXED_GAS = 80_000
"""Per aggregated block: its digest's storage slot, the block counter, the event's topics."""
PARTICIPANT_WRITE_GAS = 45_000
"""Gas to (re)write one entry of a round's participant list: a fresh storage slot."""
MAX_DATASET_SIZE = 2**32 - 1
NO_TRAINING_DIGEST = bytes(31) + b"\x01"
"""The training digest of a contract deployed outside a founding (a benchmark, a test of the
contract alone): no node's configuration has it, so no node takes part in such a swarm."""
"""The contract's MAX_SAMPLE_COUNT: the largest dataset size a member may register."""


class ContractRejected(ApiaryError):
    """The contract reverted with one of its custom errors."""

    def __init__(self, function: str, error: str, arguments: dict[str, Any]) -> None:
        self.function = function
        self.error = error
        self.arguments = arguments
        shown = ", ".join(f"{k}={_show(v)}" for k, v in arguments.items())
        super().__init__(f"SwarmLearning.{function} rejected: {error}({shown})")


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


@dataclass(frozen=True)
class HEParameters:
    poly_modulus_degree: int
    modulus: int
    slots_per_block: int
    param_count: int
    block_count: int
    block_bytes: int
    min_peers: int
    enrol_window_s: int
    commit_window_s: int


@dataclass(frozen=True)
class MemberInfo:
    address: str
    endpoint: str
    x25519_public_key: bytes
    tls_certificate: bytes
    """PEM of the self-signed certificate the member's node made (empty if unknown)."""
    dataset_size: int
    """The dataset size approved at admission: the most samples it may enrol with."""
    active: bool

    @property
    def name(self) -> str:
        """The hospital's name from its certificate, else its endpoint (for logs)."""
        return certificate_name(self.tls_certificate) or self.endpoint


@dataclass(frozen=True)
class RoundInfo:
    """`attempt` is 0 while members enrol; `contributors` counts the current attempt's
    participants (the enrolled members while attempt is 0), `committed` how many of them
    committed in it. A round that is sealed but never finalized was abandoned."""

    round: int
    attempt: int
    contributors: int
    committed: int
    total_samples: int
    aggregated_blocks: int
    sealed: bool
    finalized: bool

    @property
    def participants_fixed(self) -> bool:
        return self.attempt > 0


@dataclass(frozen=True)
class RoundTiming:
    """Chain timestamps (seconds) of a round's opening and of its current attempt's start,
    and the key epoch that encrypts it."""

    opened_at: int
    attempt_started_at: int
    key_epoch: int


@dataclass(frozen=True)
class AggregatedBlock:
    round: int
    block_index: int
    weight_sum: int
    digest: bytes
    coefficients: bytes
    transaction_hash: str


@dataclass(frozen=True)
class Proposal:
    """A candidate proposed under the majority rule and not admitted yet, with what its
    latest proposal carries."""

    address: str
    endpoint: str
    tls_certificate: bytes
    dataset_size: int
    proposer: str
    approvals: int


@dataclass(frozen=True)
class TxResult:
    transaction_hash: str
    gas_used: int
    block_number: int


@dataclass(frozen=True)
class BatchResult:
    """One `aggregateBlocks` transaction: the blocks it carried and how it ended."""

    blocks: tuple[int, ...]
    outcome: TxResult | ContractRejected


TxListener = Callable[[TxResult], None]
"""Told of every transaction an account's binding sent once it is mined (reverted ones
too: they use gas), e.g. to count the account's gas."""


class SwarmContract:
    """One deployed SwarmLearning contract, seen from one account."""

    def __init__(self, w3: Web3, address: str, private_key: str, abi: list[dict[str, Any]]):
        self.w3 = w3
        self.address = to_checksum_address(address)
        self.account: LocalAccount = Account.from_key(private_key)
        self.abi = abi
        self.contract: Contract = w3.eth.contract(address=self.address, abi=abi)
        self._errors = _error_table(abi)
        self._views = _view_table(abi)
        self._params: HEParameters | None = None
        # One account, several threads (round loop, admin API): a nonce must be read and
        # used by one sender at a time.
        self._nonce_lock = threading.Lock()
        self.on_mined: TxListener | None = None

    def _mined(self, receipt: TxReceipt) -> TxResult:
        result = TxResult(receipt["transactionHash"].to_0x_hex(), receipt["gasUsed"],
                          receipt["blockNumber"])
        if self.on_mined is not None:
            self.on_mined(result)
        return result

    # ------------------------------------------------------------------ construction

    @classmethod
    def deploy(
        cls,
        w3: Web3,
        private_key: str,
        *,
        param_count: int,
        modulus: int,
        context_digest: bytes,
        poly_modulus_degree: int = 8192,
        min_peers: int = 1,
        membership: str = "admin",
        enrol_window_s: int = 20,
        commit_window_s: int = 30,
        training_digest: bytes = NO_TRAINING_DIGEST,
    ) -> SwarmContract:
        """Deploy for one model size and HE key; `membership` is "admin" or "majority".

        Members have `enrol_window_s` after a round opens to enrol, and the participants
        `commit_window_s` to commit before the absent ones may be dropped. `training_digest`
        is the swarm-wide training configuration's (``SwarmConfig.digest``).
        """
        if membership not in MEMBERSHIP_RULES:
            raise ValueError(f"membership rule must be one of {', '.join(MEMBERSHIP_RULES)}")
        artifact = load_artifact()
        factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        account: LocalAccount = Account.from_key(private_key)
        call = factory.constructor(poly_modulus_degree, modulus, param_count, min_peers,
                                   MEMBERSHIP_RULES.index(membership), context_digest,
                                   int(enrol_window_s), int(commit_window_s),
                                   bytes(training_digest))
        errors = _error_table(artifact["abi"])
        receipt = _transact(w3, account, call, "constructor", errors)
        address = receipt["contractAddress"]
        if address is None:
            raise RuntimeError("deployment receipt has no contract address")
        return cls(w3, address, private_key, artifact["abi"])

    @classmethod
    def at(cls, w3: Web3, address: str, private_key: str) -> SwarmContract:
        return cls(w3, address, private_key, load_artifact()["abi"])

    def as_account(self, private_key: str) -> SwarmContract:
        """The same contract, sending from another account."""
        return SwarmContract(self.w3, self.address, private_key, self.abi)

    @property
    def sender(self) -> str:
        return str(self.account.address)

    # ------------------------------------------------------------------ views

    def _view(self, name: str, *args: Any) -> Any:
        """Call a view function: one `eth_call`, encoded and decoded here.

        Every member polls the round's state several times a second, and web3's contract
        call path costs ~10 ms of CPU a call against ~2 ms for the request itself (measured),
        which on a shared machine slows everyone's rounds. A call the chain rejects takes
        web3's path, which raises its usual errors.
        """
        view = self._views.get(name)
        if view is not None:
            selector, inputs, outputs = view
            data = selector + abi_encode(inputs, args)
            answer = self.w3.provider.make_request(
                "eth_call", [{"to": self.address, "data": "0x" + data.hex()}, "latest"])
            result = answer.get("result") if isinstance(answer, dict) else None
            if isinstance(result, str) and answer.get("error") is None and len(result) > 2:
                try:
                    decoded = abi_decode(outputs, bytes.fromhex(result[2:]))
                except (DecodingError, ValueError):
                    decoded = None
                if decoded is not None:
                    values = [_checksummed(kind, value)
                              for kind, value in zip(outputs, decoded, strict=True)]
                    return values[0] if len(values) == 1 else tuple(values)
        # A revert, no code at the address (a devnet still loading its state), an answer
        # that does not decode: web3's path raises what callers expect for each.
        return getattr(self.contract.functions, name)(*args).call()

    def training_digest(self) -> bytes:
        """keccak256 of the swarm-wide training configuration, fixed at deployment."""
        return bytes(self._view("trainingDigest"))

    def he_parameters(self) -> HEParameters:
        """Fixed at deployment, so read once."""
        if self._params is not None:
            return self._params
        self._params = HEParameters(
            poly_modulus_degree=self._view("polyModulusDegree"),
            modulus=self._view("modulus"),
            slots_per_block=self._view("slotsPerBlock"),
            param_count=self._view("paramCount"),
            block_count=self._view("blockCount"),
            block_bytes=self._view("blockBytes"),
            min_peers=self._view("minPeers"),
            enrol_window_s=self._view("enrolWindow"),
            commit_window_s=self._view("commitWindow"),
        )
        return self._params

    def admin(self) -> str:
        return str(self._view("admin"))

    def pending_admin(self) -> str | None:
        pending = str(self._view("pendingAdmin"))
        return None if int(pending, 16) == 0 else pending

    def active_member_count(self) -> int:
        return int(self._view("activeMemberCount"))

    def current_round(self) -> int:
        return int(self._view("currentRound"))

    def last_finalized_round(self) -> int:
        return int(self._view("lastFinalizedRound"))

    def member(self, address: str) -> MemberInfo:
        endpoint, key, certificate, dataset_size, active = self._view(
            "member", to_checksum_address(address))
        return MemberInfo(to_checksum_address(address), endpoint, bytes(key), bytes(certificate),
                          int(dataset_size), active)

    def members(self, *, active_only: bool = True) -> list[MemberInfo]:
        found = [self.member(a) for a in self._view("memberAddresses")]
        return [m for m in found if m.active or not active_only]

    def relay_order(self, round_number: int) -> list[str]:
        return [str(a) for a in self._view("relayOrder", round_number)]

    def round_info(self, round_number: int) -> RoundInfo:
        return RoundInfo(round_number, *self._view("roundInfo", round_number))

    def round_timing(self, round_number: int) -> RoundTiming:
        return RoundTiming(*(int(v) for v in self._view("roundTiming", round_number)))

    def enrolled(self, round_number: int) -> list[str]:
        return [str(a) for a in self._view("enrolled", round_number)]

    def participants(self, round_number: int) -> list[str]:
        """The current attempt's participants (the mask set), in the order the contract
        weights and aggregates them."""
        return [str(a) for a in self._view("participants", round_number)]

    def commitment(self, round_number: int, address: str) -> tuple[int, int, list[bytes]]:
        """(sample count, attempt of the last commit, that commit's digests)."""
        count, attempt, digests = self._view("commitment", round_number,
                                             to_checksum_address(address))
        return int(count), int(attempt), [bytes(d) for d in digests]

    def chain_time(self) -> int:
        """The timestamp the next block will carry: the clock the contract's windows run on.

        A devnet mines only when a transaction arrives, so its latest block can be minutes
        old; its pending block carries the time now. Chains without one give the latest.
        """
        try:
            return int(self.w3.eth.get_block("pending")["timestamp"])
        except (ValueError, KeyError, TypeError):
            return int(self.w3.eth.get_block("latest")["timestamp"])

    def round_weights(self, round_number: int) -> tuple[list[str], list[int], int]:
        addresses, weights, total = self._view("roundWeights", round_number)
        return [str(a) for a in addresses], [int(w) for w in weights], int(total)

    def aggregate_digest(self, round_number: int, block_index: int) -> bytes:
        return bytes(self._view("aggregateDigest", round_number, block_index))

    def membership_rule(self) -> str:
        return MEMBERSHIP_RULES[int(self._view("membershipRule"))]

    def proposal_approvals(self, address: str) -> int:
        return int(self._view("proposalApprovals", to_checksum_address(address)))

    def key_epoch_for(self, round_number: int) -> tuple[int, bytes]:
        """The HE key epoch that encrypts `round_number`, and its public context digest."""
        epoch, digest = self._view("keyEpochFor", round_number)
        return int(epoch), bytes(digest)

    def key_epoch(self, epoch: int) -> tuple[int, bytes]:
        """(first round, public context digest) of key epoch `epoch`."""
        from_round, digest = self._view("keyEpoch", epoch)
        return int(from_round), bytes(digest)

    def key_epoch_count(self) -> int:
        return int(self._view("keyEpochCount"))

    # ------------------------------------------------------------------ transactions

    def _send(self, name: str, *args: Any, gas: int | None = None,
              extra_gas: int = 0) -> TxResult:
        call = getattr(self.contract.functions, name)(*args)
        receipt = _transact(self.w3, self.account, call, name, self._errors, gas=gas,
                            extra_gas=extra_gas, nonce_lock=self._nonce_lock,
                            on_mined=self._mined)
        return TxResult(receipt["transactionHash"].to_0x_hex(), receipt["gasUsed"],
                        receipt["blockNumber"])

    def add_member(self, address: str, endpoint: str, x25519_public_key: bytes,
                   tls_certificate: bytes, dataset_size: int) -> TxResult:
        """Admit `address` (admin only) with its endpoint, X25519 key, the PEM of its node's
        self-signed TLS certificate and its dataset size (the most samples it may enrol
        with)."""
        _check_x25519(x25519_public_key)
        return self._send("addMember", to_checksum_address(address), endpoint, x25519_public_key,
                          tls_certificate, dataset_size)

    def remove_member(self, address: str, context_digest: bytes) -> TxResult:
        """Deactivate `address` and start key epoch `context_digest` in one transaction."""
        return self._send_with_room("removeMember", to_checksum_address(address),
                                    context_digest)

    def propose_member(self, address: str, endpoint: str, x25519_public_key: bytes,
                       tls_certificate: bytes, dataset_size: int) -> TxResult:
        """Majority rule: propose `address` with what `add_member` takes."""
        _check_x25519(x25519_public_key)
        return self._send("proposeMember", to_checksum_address(address), endpoint,
                          x25519_public_key, tls_certificate, dataset_size)

    def approve_member(self, address: str) -> TxResult:
        return self._send("approveMember", to_checksum_address(address))

    def rotate_key(self, context_digest: bytes) -> TxResult:
        """A new key epoch from the first round nobody has encrypted yet (retryable)."""
        return self._send("rotateKey", context_digest)

    def transfer_admin(self, new_admin: str) -> TxResult:
        return self._send("transferAdmin", to_checksum_address(new_admin))

    def accept_admin(self) -> TxResult:
        return self._send("acceptAdmin")

    def fund(self, address: str, wei: int) -> TxResult:
        """Send `wei` to `address` (a newcomer needs gas for its commits)."""
        return self._mined(send_ether(self.w3, self.account, address, wei, self._nonce_lock))

    def _send_with_room(self, name: str, *args: Any) -> TxResult:
        """Send a call whose gas depends on who else acted first.

        Members enrol and drop each other concurrently: the enrolment that completes the set
        also fixes the participants (one storage write per member), so the estimate made
        against an earlier state is too low. Simulate, then allow for rewriting the whole
        participant list.
        """
        room = PARTICIPANT_WRITE_GAS * (self.active_member_count() + 1)
        return self._send(name, *args, extra_gas=room)

    def enrol(self, round_number: int, key_epoch: int, sample_count: int) -> TxResult:
        return self._send_with_room("enrol", round_number, key_epoch, sample_count)

    def fix_participants(self, round_number: int) -> TxResult:
        return self._send_with_room("fixParticipants", round_number)

    def drop_absent(self, round_number: int) -> TxResult:
        return self._send_with_room("dropAbsent", round_number)

    def drop_withheld(self, round_number: int, withheld: Sequence[str]) -> TxResult:
        return self._send_with_room("dropWithheld", round_number,
                                    [to_checksum_address(a) for a in withheld])

    def commit(self, round_number: int, attempt: int, key_epoch: int,
               digests: Sequence[bytes]) -> TxResult:
        for i, digest in enumerate(digests):
            if len(digest) != 32:
                raise ValueError(f"digest {i} has {len(digest)} bytes, a keccak256 digest has 32")
        return self._send("commit", round_number, attempt, key_epoch, list(digests))

    def aggregate(
        self, round_number: int, block_index: int, ciphertexts: Sequence[bytes]
    ) -> TxResult:
        return self._send("aggregate", round_number, block_index, list(ciphertexts),
                          gas=_aggregate_gas(ciphertexts))

    def aggregate_batches(
        self, round_number: int, blocks: dict[int, Sequence[bytes]],
        max_gas: int | None = None,
    ) -> list[BatchResult]:
        """Aggregate `blocks` (block index → the participants' ciphertexts) in as few
        `aggregateBlocks` transactions as fit `max_gas` each (default: half the chain's block
        gas limit, at most MAX_BATCH_GAS), sent back to back, then collect the receipts.

        The relay has checked every block against the committed digests, so the calls are
        not simulated first; a revert (another relay was quicker) is decoded by replaying
        the call on the state it met and returned as that batch's ContractRejected.
        """
        if max_gas is None:
            limit = int(self.w3.eth.get_block("latest")["gasLimit"])
            max_gas = min(limit // 2, MAX_BATCH_GAS)
        chain_id = self.w3.eth.chain_id
        sent: list[tuple[tuple[int, ...], Any, Any]] = []
        with self._nonce_lock:
            nonce = self.w3.eth.get_transaction_count(self.account.address, "pending")
            for offset, batch in enumerate(plan_batches(blocks, max_gas)):
                call = self.contract.functions.aggregateBlocks(
                    round_number, list(batch), [list(blocks[i]) for i in batch])
                tx = call.build_transaction({"from": self.account.address,
                                             "nonce": nonce + offset,
                                             "gas": batch_gas([blocks[i] for i in batch]),
                                             "chainId": chain_id})
                signed = self.account.sign_transaction(tx)
                sent.append((batch, call, self.w3.eth.send_raw_transaction(signed.raw_transaction)))
        results = []
        if sent:
            # Our nonces follow each other, so the last mined means every one is: wait for it
            # alone, with a bare request (web3's receipt polling costs a core's worth of CPU
            # while the chain is busy with the batches).
            self._await_mined(sent[-1][2])
        for batch, call, tx_hash in sent:
            receipt = self.w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=120, poll_latency=RECEIPT_POLL_SECONDS
            )
            mined = self._mined(receipt)
            outcome: TxResult | ContractRejected = mined
            if receipt["status"] != 1:
                outcome = _replayed_revert(self.w3, self.account, call, "aggregateBlocks",
                                           self._errors, receipt["blockNumber"])
            results.append(BatchResult(batch, outcome))
        return results

    def _await_mined(self, tx_hash: Any, timeout: float = 120.0) -> None:
        """Return once the transaction has a receipt; TimeoutError after `timeout` seconds."""
        give_up = time.monotonic() + timeout
        request = [tx_hash.to_0x_hex() if hasattr(tx_hash, "to_0x_hex") else str(tx_hash)]
        while True:
            answer = self.w3.provider.make_request("eth_getTransactionReceipt", request)
            if isinstance(answer, dict) and answer.get("result"):
                return
            if time.monotonic() > give_up:
                raise TimeoutError(f"transaction {request[0]} was not mined within "
                                   f"{timeout:.0f} s")
            time.sleep(RECEIPT_POLL_SECONDS)

    def aggregate_digests(self, round_number: int) -> list[bytes]:
        """Every block's aggregate digest of the round, in block order (zero: not yet)."""
        return [bytes(d) for d in self._view("aggregateDigests", round_number)]

    # ------------------------------------------------------------------ events

    def aggregated_blocks(
        self, round_number: int, from_block: int = 0
    ) -> dict[int, AggregatedBlock]:
        """The round's BlockAggregated events, by block index."""
        logs = self.contract.events.BlockAggregated().get_logs(
            from_block=from_block, argument_filters={"round": round_number}
        )
        found: dict[int, AggregatedBlock] = {}
        for log in logs:
            args = log["args"]
            found[int(args["blockIndex"])] = AggregatedBlock(
                round=int(args["round"]),
                block_index=int(args["blockIndex"]),
                weight_sum=int(args["weightSum"]),
                digest=bytes(args["digest"]),
                coefficients=bytes(args["coefficients"]),
                transaction_hash=log["transactionHash"].to_0x_hex(),
            )
        return found

    def proposals(self, from_block: int = 0) -> list[Proposal]:
        """The candidates awaiting approval: proposed (MemberProposed), not admitted yet. What
        each was proposed with is read from the proposing transaction's calldata."""
        latest: dict[str, Any] = {}
        for log in self.contract.events.MemberProposed().get_logs(from_block=from_block):
            latest[str(log["args"]["candidate"])] = log
        pending = []
        for candidate, log in latest.items():
            approvals = self.proposal_approvals(candidate)
            if approvals == 0 or self.member(candidate).endpoint:
                continue
            tx = self.w3.eth.get_transaction(log["transactionHash"])
            _, args = self.contract.decode_function_input(tx["input"])
            pending.append(Proposal(candidate, str(args["endpoint"]),
                                    bytes(args["tlsCertificate"]), int(args["datasetSize"]),
                                    str(log["args"]["proposer"]), approvals))
        return pending

    def finalized_root(self, round_number: int) -> bytes | None:
        found = self.finalization(round_number)
        return found[0] if found is not None else None

    def finalization(self, round_number: int) -> tuple[bytes, str] | None:
        """The aggregate root a finalized round's RoundFinalized event records, and the
        transaction that emitted it (None while the round is not finalized)."""
        logs = self.contract.events.RoundFinalized().get_logs(
            from_block=0, argument_filters={"round": round_number}
        )
        if not logs:
            return None
        return bytes(logs[-1]["args"]["aggregateRoot"]), logs[-1]["transactionHash"].to_0x_hex()


def _check_x25519(key: bytes) -> None:
    if len(key) != 32:
        raise ValueError(f"an X25519 public key has 32 bytes, got {len(key)}")


def send_ether(
    w3: Web3,
    account: LocalAccount,
    to: str,
    wei: int,
    nonce_lock: threading.Lock | None = None,
) -> TxReceipt:
    """A plain value transfer from `account`, waited for: fresh accounts need gas."""
    with nonce_lock or contextlib.nullcontext():
        tx: TxParams = {
            "from": account.address, "to": to_checksum_address(to), "value": wei,
            "nonce": w3.eth.get_transaction_count(account.address, "pending"),
            "gas": 21_000, "chainId": w3.eth.chain_id, "gasPrice": w3.eth.gas_price,
        }
        signed = account.sign_transaction(tx)
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    return w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)


def aggregate_gas_bound(calldata_bytes: int, block_bytes: int) -> int:
    """A safe gas limit for `aggregate`, so it need not be estimated.

    Calldata is charged at most at the EIP-7623 floor (40 gas a byte); execution stays
    below ~4 gas per calldata byte (hashing and the weighted sum) plus the event's 8 gas
    per result byte, memory and a few storage writes.
    """
    return 21_000 + 44 * calldata_bytes + 12 * block_bytes + 600_000


def batch_gas(blocks: Sequence[Sequence[bytes]]) -> int:
    """The gas bound of one `aggregateBlocks` call over these blocks: calldata at the floor
    price, each block's hashing, sum, event and storage, and the call's fixed part."""
    calldata = 128 + 32 * len(blocks) + sum(
        64 + sum(len(c) + 64 for c in ciphertexts) for ciphertexts in blocks)
    per_block = sum(12 * max((len(c) for c in ciphertexts), default=0) + BLOCK_FIXED_GAS
                    for ciphertexts in blocks)
    return 21_000 + 44 * calldata + per_block + 600_000


def plan_batches(blocks: dict[int, Sequence[bytes]], max_gas: int) -> list[tuple[int, ...]]:
    """Block indices grouped in ascending order into batches whose gas bound stays within
    `max_gas` (a block that alone exceeds it goes in a batch of its own)."""
    batches: list[tuple[int, ...]] = []
    current: list[int] = []
    for index in sorted(blocks):
        if current and batch_gas([blocks[i] for i in [*current, index]]) > max_gas:
            batches.append(tuple(current))
            current = []
        current.append(index)
    if current:
        batches.append(tuple(current))
    return batches


def _aggregate_gas(ciphertexts: Sequence[bytes]) -> int:
    """The gas bound of one `aggregate` call over these ciphertexts (ABI: 64 bytes of
    offset and length each, 128 for the call's head)."""
    calldata = sum(len(c) + 64 for c in ciphertexts) + 128
    return aggregate_gas_bound(calldata, max((len(c) for c in ciphertexts), default=0))


def _view_table(abi: list[dict[str, Any]]) -> dict[str, tuple[bytes, list[str], list[str]]]:
    """Selector, input and output types of each view function whose types are plain (no
    tuples) and whose name is not overloaded."""
    table: dict[str, tuple[bytes, list[str], list[str]]] = {}
    names = [item.get("name") for item in abi if item.get("type") == "function"]
    for item in abi:
        if item.get("type") != "function" or item.get("stateMutability") not in ("view", "pure"):
            continue
        inputs = [i["type"] for i in item["inputs"]]
        outputs = [o["type"] for o in item["outputs"]]
        if names.count(item["name"]) > 1 or any(t.startswith("tuple") for t in inputs + outputs):
            continue
        selector = function_signature_to_4byte_selector(f"{item['name']}({','.join(inputs)})")
        table[item["name"]] = (selector, inputs, outputs)
    return table


def _checksummed(kind: str, value: Any) -> Any:
    """Addresses as web3 gives them (checksummed), arrays as lists."""
    if kind == "address":
        return to_checksum_address(value)
    if kind == "address[]":
        return [to_checksum_address(v) for v in value]
    if kind.endswith("]"):
        return list(value)
    return value


def _error_table(abi: list[dict[str, Any]]) -> dict[bytes, tuple[str, list[str], list[str]]]:
    table = {}
    for item in abi:
        if item.get("type") != "error":
            continue
        types = [i["type"] for i in item["inputs"]]
        names = [i["name"] for i in item["inputs"]]
        selector = function_signature_to_4byte_selector(f"{item['name']}({','.join(types)})")
        table[selector] = (item["name"], types, names)
    return table


def _decode_revert(
    function: str, error: ContractLogicError, errors: dict[bytes, tuple[str, list[str], list[str]]]
) -> Exception:
    data = error.data if isinstance(error.data, str) else None
    if not data or len(data) < 10:
        return error
    raw = bytes.fromhex(data.removeprefix("0x"))
    entry = errors.get(raw[:4])
    if entry is None:
        return error
    name, types, names = entry
    values = abi_decode(types, raw[4:])
    return ContractRejected(function, name, dict(zip(names, values, strict=True)))


def _replayed_revert(
    w3: Web3,
    account: LocalAccount,
    call: Any,
    function: str,
    errors: dict[bytes, tuple[str, list[str], list[str]]],
    block_number: int,
) -> ContractRejected:
    """Why a mined call reverted: replay it on the state before its block."""
    try:
        call.call({"from": account.address}, block_identifier=block_number - 1)
    except ContractLogicError as exc:
        decoded = _decode_revert(function, exc, errors)
        if isinstance(decoded, ContractRejected):
            return decoded
    return ContractRejected(function, "Reverted", {"block": block_number})


def _transact(
    w3: Web3,
    account: LocalAccount,
    call: Any,
    function: str,
    errors: dict[bytes, tuple[str, list[str], list[str]]],
    gas: int | None = None,
    nonce_lock: threading.Lock | None = None,
    extra_gas: int = 0,
    on_mined: Callable[[TxReceipt], object] | None = None,
) -> TxReceipt:
    """Simulate, then sign and send; a revert in simulation raises ContractRejected.

    With ``gas`` given the simulation is one ``eth_call`` instead of a gas estimate (which
    re-executes the call many times: costly for megabyte-sized aggregates); otherwise the
    estimate gets its headroom plus ``extra_gas``.
    """
    params: TxParams = {"from": account.address}
    try:
        if gas is None:
            estimate = call.estimate_gas(params, block_identifier="pending")
            gas = int(estimate * GAS_HEADROOM) + extra_gas
        else:
            call.call(params, block_identifier="pending")
    except ContractLogicError as exc:
        raise _decode_revert(function, exc, errors) from exc
    with nonce_lock or contextlib.nullcontext():
        tx = call.build_transaction(
            {
                "from": account.address,
                "nonce": w3.eth.get_transaction_count(account.address, "pending"),
                "gas": gas,
                "chainId": w3.eth.chain_id,
            }
        )
        signed = account.sign_transaction(tx)
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(
        tx_hash, timeout=120, poll_latency=RECEIPT_POLL_SECONDS
    )
    if on_mined is not None:
        on_mined(receipt)
    if receipt["status"] != 1:
        raise _replayed_revert(w3, account, call, function, errors, receipt["blockNumber"])
    return receipt
