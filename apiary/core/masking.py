"""Pairwise additive masks on ciphertext coefficients, cancelling in the weighted sum.

Every member holds the swarm's CKKS secret key, so a member that saw another member's
ciphertext could decrypt it. Each member therefore adds a mask mᵢ, uniform modulo q, to
its ciphertext coefficients before it sends them; the masks are built so that they
cancel exactly in the Σ wᵢ·ctᵢ mod q the contract computes, and only that aggregate
decrypts to something meaningful.

Construction. For one attempt at a round the contract reports the participants
P = [p_0, …, p_{n−1}] and their integer weights w_0, …, w_{n−1}. Members a and b share a
seed: X25519 between one's private key and the other's public key (on chain), then
HKDF-SHA256 with salt = the contract address and info = ``INFO`` followed by the two
addresses in ascending order, so both ends derive the same 32 bytes. From it, a
per-(round, attempt) AES-256 key is HKDF-expanded, and block b of the pair's stream is
AES-256-CTR under that key with the 16-byte initial counter block = b (u64 big-endian)
followed by 64 zero bits. The counter therefore runs in the low 64 bits only, and one
block uses about 2^13 AES blocks of it, so it can never run into the next block's
counter space; a different round or attempt has a different key altogether.
r_ab(block) is the first ``COEFFS_PER_BLOCK`` accepted words of that keystream, read as
little-endian u64, each cut to its low k = q.bit_length() bits, a word being accepted
when it is below q. Participant i then masks with

    mᵢ = Σ_{j>i} w_j·r_{ij} − Σ_{j<i} w_j·r_{ji}  (mod q),

and Σᵢ wᵢ·mᵢ = Σ_{i<j} wᵢw_j·r_{ij} − Σ_{i<j} w_jwᵢ·r_{ij} = 0 (mod q): the masked
ciphertexts sum to exactly the unmasked sum, bit for bit, so decryption and its
precision are unchanged.

Uniformity. Under the usual assumption that AES-CTR under an unknown key is
indistinguishable from random, the low k bits of each word are uniform on [0, 2^k).
Rejection keeps a value only when it is below q, and conditioned on that the kept value
is exactly uniform on [0, q): there is no modulo bias, unlike reducing a 64-bit word mod
q. As 2^(k−1) ≤ q < 2^k, at least half the words are kept; for the swarm's prime, just
below 2^60, about one word in 10^13 is rejected. With q prime and 1 ≤ w_j < q, w_j is
invertible mod q, so w_j·r_{ij} is uniform too, and mᵢ, which contains such a term for
every other participant, is uniform to anyone missing at least one of i's pair seeds.

Why peer weights and not wᵢ⁻¹. The textbook variant masks with wᵢ⁻¹·Σ ±r_{ij}, which
needs a multiplication by a full-size residue mod q, i.e. 60 × 60-bit products. Scaling
each pair stream by the peer's weight instead needs only small-integer multiples, which
`coefficients.weighted_sum` already computes exactly (Σw ≤ 2^32), followed by one
modular subtraction; nothing new on the arithmetic side, and the contract is unchanged.

What the masks do not hide. The aggregate is meant to decrypt, so with two participants
each learns the other's update from it, and the other n − 1 participants together can
rebuild mᵢ. When a participant drops out, the survivors re-mask under a new MaskSet with
a higher attempt number; masks of different attempts are independent, so no combination
of one attempt's ciphertexts with another's cancels. But if the dropped member's masked
ciphertext of the earlier attempt did reach the others, the earlier attempt's aggregate
can be computed off chain, and together with the new one it reveals that member's
update: re-masking is only safe for a member whose earlier ciphertext was never shared.
Never mask two different ciphertexts under the same (round, attempt): their difference
would be unmasked.
"""

from __future__ import annotations

import operator
import re
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand

from apiary.core.coefficients import (
    COEFFS_PER_BLOCK,
    MAX_MODULUS,
    MAX_TOTAL_WEIGHT,
    MalformedCiphertext,
    block_from_bytes,
    block_to_bytes,
    weighted_sum,
    weights_from_sample_counts,
)
from apiary.core.errors import ApiaryError

INFO = b"apiary mask v1"
"""Prefix of the HKDF ``info`` of a pair seed; the two sorted raw addresses follow."""

STREAM_INFO = b"apiary mask v1 stream"
"""Prefix of the HKDF-expand ``info`` of a per-(round, attempt) stream key; round (u64
big-endian) and attempt (u32 big-endian) follow."""

KEY_BYTES = 32
SEED_BYTES = 32
MAX_ROUND = 2**64 - 1
MAX_ATTEMPT = 2**32 - 1
MAX_BLOCK_INDEX = 2**64 - 1

SWARM_MODULUS = 1152921504606748673
"""The swarm's data prime, CoeffModulus.Create(8192, [60, 60])[0]; `bench_masking`'s
default, so that the benchmark needs no CKKS context."""

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_WORD = np.dtype("<u8")
_BLOCK_WORD_BYTES = COEFFS_PER_BLOCK * _WORD.itemsize
_ZEROS = bytes(_BLOCK_WORD_BYTES)
_MIN_REFILL_WORDS = 64
_ROUND_ATTEMPT = struct.Struct(">QI")
_NONCE = struct.Struct(">QQ")


class MaskingError(ApiaryError):
    """Masks cannot be built or applied: a bad participant set, key, block or modulus."""


@dataclass(frozen=True)
class MaskSet:
    """The participants of one attempt at a round, in the contract's order, with weights.

    Addresses are normalised to lower-case hex, so checksummed and lower-case spellings
    of one address are the same participant.
    """

    participants: tuple[str, ...]
    weights: tuple[int, ...]
    round: int
    attempt: int

    def __post_init__(self) -> None:
        if isinstance(self.participants, str):
            raise MaskingError("participants must be a sequence of addresses, not one string")
        participants = tuple(
            _normalise_address(a, f"participant {i}") for i, a in enumerate(self.participants)
        )
        weights = tuple(_as_int(w, f"weight {i}") for i, w in enumerate(self.weights))
        if len(participants) < 2:
            raise MaskingError(
                f"a mask set needs at least 2 participants, got {len(participants)}; "
                "a lone member's ciphertext cannot be masked"
            )
        if len(weights) != len(participants):
            raise MaskingError(
                f"got {len(participants)} participants but {len(weights)} weights; "
                "need one weight per participant"
            )
        seen: dict[str, int] = {}
        for i, address in enumerate(participants):
            if address in seen:
                raise MaskingError(
                    f"participant {address} appears twice (positions {seen[address]} and {i})"
                )
            seen[address] = i
        for i, w in enumerate(weights):
            if w < 1:
                raise MaskingError(
                    f"weight of participant {participants[i]} is {w}; every weight must be "
                    "at least 1"
                )
        total = sum(weights)
        if total > MAX_TOTAL_WEIGHT:
            raise MaskingError(f"sum of weights is {total}; at most 2^32 keeps the sums exact")
        round_number = _as_int(self.round, "round")
        attempt = _as_int(self.attempt, "attempt")
        if not 0 <= round_number <= MAX_ROUND:
            raise MaskingError(f"round must be in [0, 2^64), got {round_number}")
        if not 0 <= attempt <= MAX_ATTEMPT:
            raise MaskingError(f"attempt must be in [0, 2^32), got {attempt}")
        object.__setattr__(self, "participants", participants)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "round", round_number)
        object.__setattr__(self, "attempt", attempt)

    @classmethod
    def from_sample_counts(
        cls, participants: Sequence[str], sample_counts: Sequence[int], round: int, attempt: int
    ) -> MaskSet:
        """The mask set with the weights the contract derives from the sample counts."""
        try:
            weights = weights_from_sample_counts(sample_counts)
        except ValueError as exc:
            raise MaskingError(str(exc)) from None
        return cls(tuple(participants), tuple(weights), round, attempt)

    @property
    def total_weight(self) -> int:
        return sum(self.weights)

    def index(self, address: str) -> int:
        """Position of ``address`` in the participants (any capitalisation)."""
        normalised = _normalise_address(address, "address")
        try:
            return self.participants.index(normalised)
        except ValueError:
            raise MaskingError(
                f"{normalised} is not a participant of round {self.round} attempt "
                f"{self.attempt} ({len(self.participants)} participants)"
            ) from None


def pair_seed(
    own_private: bytes,
    peer_public: bytes,
    own_address: str,
    peer_address: str,
    contract_address: str,
) -> bytes:
    """The 32-byte seed members ``own_address`` and ``peer_address`` share; both ends
    derive the same one."""
    return _pair_seed(
        _private_key(own_private),
        _public_key(peer_public, peer_address),
        _normalise_address(own_address, "own address"),
        _normalise_address(peer_address, "peer address"),
        _normalise_address(contract_address, "contract address"),
    )


def stream_key(seed: bytes, round: int, attempt: int) -> bytes:
    """The AES-256 key of a pair's mask streams for one (round, attempt)."""
    if len(seed) != SEED_BYTES:
        raise MaskingError(f"a pair seed is {SEED_BYTES} bytes, got {len(seed)}")
    round_number = _as_int(round, "round")
    attempt_number = _as_int(attempt, "attempt")
    if not 0 <= round_number <= MAX_ROUND:
        raise MaskingError(f"round must be in [0, 2^64), got {round_number}")
    if not 0 <= attempt_number <= MAX_ATTEMPT:
        raise MaskingError(f"attempt must be in [0, 2^32), got {attempt_number}")
    info = STREAM_INFO + _ROUND_ATTEMPT.pack(round_number, attempt_number)
    return HKDFExpand(hashes.SHA256(), KEY_BYTES, info).derive(bytes(seed))


def expand_seed(seed: bytes, round: int, attempt: int, block: int, modulus: int) -> np.ndarray:
    """r(round, attempt, block): ``COEFFS_PER_BLOCK`` values uniform in [0, q) (uint64)."""
    q = _check_modulus(modulus)
    index = _as_int(block, "block index")
    if not 0 <= index <= MAX_BLOCK_INDEX:
        raise MaskingError(f"block index must be in [0, 2^64), got {index}")
    return _expand(stream_key(seed, round, attempt), index, q)


class Masker:
    """One member's masking: its keys, its peers' public keys, the swarm's contract and q.

    Pair seeds are derived once per peer and cached; `mask` and `mask_bytes` then mask a
    member's ciphertext blocks (block k of the list is block index k of the vector) for
    one `MaskSet`.
    """

    def __init__(
        self,
        own_address: str,
        own_private: bytes,
        peer_public_keys: Mapping[str, bytes],
        contract_address: str,
        modulus: int,
    ) -> None:
        self._address = _normalise_address(own_address, "own address")
        self._contract = _normalise_address(contract_address, "contract address")
        self._private = _private_key(own_private)
        self._modulus = _check_prime_modulus(modulus)
        own_public = self._private.public_key().public_bytes_raw()
        peers: dict[str, X25519PublicKey] = {}
        raw: dict[str, bytes] = {}
        for address, public in peer_public_keys.items():
            normalised = _normalise_address(address, "peer address")
            key = _public_key(public, normalised)
            key_bytes = key.public_bytes_raw()
            if normalised in raw and raw[normalised] != key_bytes:
                raise MaskingError(f"two different public keys are given for {normalised}")
            raw[normalised] = key_bytes
            if normalised == self._address:
                if key_bytes != own_public:
                    raise MaskingError(
                        f"the public key given for this member ({normalised}) does not "
                        "match its own private key"
                    )
                continue
            peers[normalised] = key
        self._peers = peers
        self._seeds: dict[str, bytes] = {}

    @property
    def address(self) -> str:
        return self._address

    @property
    def modulus(self) -> int:
        return self._modulus

    def seed(self, peer_address: str) -> bytes:
        """The (cached) pair seed shared with ``peer_address``."""
        peer = _normalise_address(peer_address, "peer address")
        seed = self._seeds.get(peer)
        if seed is None:
            if peer == self._address:
                raise MaskingError(f"{peer} is this member itself; a pair needs two members")
            key = self._peers.get(peer)
            if key is None:
                raise MaskingError(
                    f"no X25519 public key for participant {peer}; its key must be on chain "
                    "before it can take part in a round"
                )
            seed = _pair_seed(self._private, key, self._address, peer, self._contract)
            self._seeds[peer] = seed
        return seed

    def block_mask(self, mask_set: MaskSet, block: int) -> np.ndarray:
        """This member's mask mᵢ for one block index (uint64 values in [0, q))."""
        index = _as_int(block, "block index")
        if not 0 <= index <= MAX_BLOCK_INDEX:
            raise MaskingError(f"block index must be in [0, 2^64), got {index}")
        return self._block_mask(self._plan(mask_set), index)

    def mask(
        self, blocks: Sequence[np.ndarray] | Sequence[bytes], mask_set: MaskSet
    ) -> list[np.ndarray]:
        """The blocks with this member's masks added: (ctₖ + mᵢ(k)) mod q for block k.

        Blocks are uint64 arrays of ``COEFFS_PER_BLOCK`` values in [0, q) or wire bytes
        (big-endian u64); the result is always arrays.
        """
        arrays = self._parse_blocks(blocks)
        plan = self._plan(mask_set)
        q = np.uint64(self._modulus)
        out = []
        for index, coeffs in enumerate(arrays):
            total = coeffs + self._block_mask(plan, index)
            out.append(np.where(total >= q, total - q, total))
        return out

    def mask_bytes(self, blocks: Sequence[bytes], mask_set: MaskSet) -> list[bytes]:
        """`mask` for wire blocks, returning wire blocks."""
        return [block_to_bytes(b) for b in self.mask(blocks, mask_set)]

    def _plan(self, mask_set: MaskSet) -> _Plan:
        if not isinstance(mask_set, MaskSet):
            raise MaskingError(f"expected a MaskSet, got {type(mask_set).__name__}")
        i = mask_set.index(self._address)

        def pairs(indices: range) -> list[tuple[bytes, int]]:
            return [
                (
                    stream_key(
                        self.seed(mask_set.participants[j]), mask_set.round, mask_set.attempt
                    ),
                    mask_set.weights[j],
                )
                for j in indices
            ]

        return _Plan(after=pairs(range(i + 1, len(mask_set.participants))), before=pairs(range(i)))

    def _block_mask(self, plan: _Plan, index: int) -> np.ndarray:
        plus = self._side_sum(plan.after, index)
        minus = self._side_sum(plan.before, index)
        difference = plus - minus
        return np.where(plus >= minus, difference, difference + np.uint64(self._modulus))

    def _side_sum(self, side: list[tuple[bytes, int]], index: int) -> np.ndarray:
        if not side:
            return np.zeros(COEFFS_PER_BLOCK, dtype=np.uint64)
        streams = np.stack([_expand(key, index, self._modulus) for key, _ in side])
        return weighted_sum(streams, [w for _, w in side], self._modulus)

    def _parse_blocks(self, blocks: Sequence[np.ndarray] | Sequence[bytes]) -> list[np.ndarray]:
        if isinstance(blocks, (bytes, bytearray, memoryview, np.ndarray)):
            raise MaskingError("blocks must be a list of blocks, not a single block")
        items = list(blocks)
        if not items:
            raise MaskingError("no ciphertext blocks to mask; a vector has at least one block")
        q = self._modulus
        arrays = []
        for k, block in enumerate(items):
            if isinstance(block, (bytes, bytearray, memoryview)):
                try:
                    arrays.append(block_from_bytes(bytes(block), q))
                except MalformedCiphertext as exc:
                    raise MaskingError(f"ciphertext block {k}: {exc}") from None
            elif isinstance(block, np.ndarray):
                arrays.append(_check_block(block, k, q))
            else:
                raise MaskingError(
                    f"ciphertext block {k} is a {type(block).__name__}; expected bytes or a "
                    "numpy uint64 array"
                )
        return arrays


@dataclass(frozen=True)
class _Plan:
    """Stream keys and weights of one member's pairs for one MaskSet: the pairs with
    later participants (added) and with earlier ones (subtracted)."""

    after: list[tuple[bytes, int]]
    before: list[tuple[bytes, int]]


def bench_masking(blocks: int = 245, members: int = 5, modulus: int = SWARM_MODULUS) -> float:
    """Seconds one member takes to mask ``blocks`` blocks in a round of ``members``.

    The member timed sits in the middle of the participant order, so that it has pairs
    on both sides (the costliest case); its pair seeds are already cached, as they are
    after a node's first round.
    """
    blocks = _as_int(blocks, "blocks")
    members = _as_int(members, "members")
    if blocks < 1 or members < 2:
        raise MaskingError("bench_masking needs at least 1 block and 2 members")
    keys = [X25519PrivateKey.generate() for _ in range(members)]
    addresses = [f"0x{i + 1:040x}" for i in range(members)]
    publics = {a: k.public_key().public_bytes_raw() for a, k in zip(addresses, keys, strict=True)}
    me = members // 2
    masker = Masker(addresses[me], keys[me].private_bytes_raw(), publics, "0x" + "c0" * 20, modulus)
    mask_set = MaskSet(tuple(addresses), tuple([1] * members), round=1, attempt=0)
    rng = np.random.default_rng(0)
    data = list(rng.integers(0, modulus, size=(blocks, COEFFS_PER_BLOCK), dtype=np.uint64))
    for address in addresses[:me] + addresses[me + 1 :]:
        masker.seed(address)
    start = time.perf_counter()
    masker.mask(data, mask_set)
    return time.perf_counter() - start


def _expand(key: bytes, index: int, q: int) -> np.ndarray:
    """The first ``COEFFS_PER_BLOCK`` accepted words of block ``index``'s keystream."""
    low_bits = np.uint64((1 << q.bit_length()) - 1)
    q_u = np.uint64(q)
    encryptor = Cipher(algorithms.AES(key), modes.CTR(_NONCE.pack(index, 0))).encryptor()
    words = np.frombuffer(encryptor.update(_ZEROS), dtype=_WORD) & low_bits
    accepted = words < q_u
    if bool(accepted.all()):
        return words.astype(np.uint64, copy=False)
    parts = [words[accepted]]
    have = parts[0].size
    while have < COEFFS_PER_BLOCK:
        need = COEFFS_PER_BLOCK - have
        more = max(2 * need, _MIN_REFILL_WORDS)
        extra = np.frombuffer(encryptor.update(bytes(more * _WORD.itemsize)), dtype=_WORD)
        extra = extra & low_bits
        extra = extra[extra < q_u]
        parts.append(extra)
        have += extra.size
    return np.concatenate(parts)[:COEFFS_PER_BLOCK].astype(np.uint64, copy=False)


def _pair_seed(
    own_private: X25519PrivateKey,
    peer_public: X25519PublicKey,
    own_address: str,
    peer_address: str,
    contract_address: str,
) -> bytes:
    if own_address == peer_address:
        raise MaskingError(f"{own_address} is this member itself; a pair needs two members")
    try:
        shared = own_private.exchange(peer_public)
    except ValueError:
        shared = bytes(32)
    if not any(shared):
        raise MaskingError(
            f"X25519 agreement with the public key of {peer_address} gives the all-zero "
            "shared secret: that key is a low-order point, not a member's real key"
        )
    first, second = sorted((own_address, peer_address))
    info = INFO + _address_bytes(first) + _address_bytes(second)
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=SEED_BYTES,
        salt=_address_bytes(contract_address),
        info=info,
    )
    return hkdf.derive(shared)


def _private_key(data: bytes) -> X25519PrivateKey:
    raw = _key_bytes(data, "own X25519 private key")
    return X25519PrivateKey.from_private_bytes(raw)


def _public_key(data: bytes, owner: str) -> X25519PublicKey:
    raw = _key_bytes(data, f"X25519 public key of {owner}")
    return X25519PublicKey.from_public_bytes(raw)


def _key_bytes(data: object, what: str) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MaskingError(f"{what} must be {KEY_BYTES} raw bytes, got {type(data).__name__}")
    raw = bytes(data)
    if len(raw) != KEY_BYTES:
        raise MaskingError(f"{what} must be {KEY_BYTES} raw bytes, got {len(raw)}")
    return raw


def _normalise_address(value: object, what: str) -> str:
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value):
        raise MaskingError(f"{what} must be a 0x-prefixed 20-byte hex address, got {value!r}")
    return value.lower()


def _address_bytes(address: str) -> bytes:
    return bytes.fromhex(address[2:])


def _as_int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise MaskingError(f"{what} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise MaskingError(f"{what} must be an integer, got {value!r}") from None


def _check_modulus(modulus: object) -> int:
    q = _as_int(modulus, "modulus")
    if not 2 <= q < MAX_MODULUS:
        raise MaskingError(f"modulus must be in [2, 2^62), got {q}")
    return q


def _check_prime_modulus(modulus: object) -> int:
    q = _check_modulus(modulus)
    if q <= MAX_TOTAL_WEIGHT or not _is_prime(q):
        raise MaskingError(
            f"modulus {q} is not a prime above 2^32; the masks are uniform only modulo a "
            "prime that no weight is a multiple of"
        )
    return q


_WITNESSES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)


def _is_prime(n: int) -> bool:
    """Miller–Rabin with the first twelve primes as bases: exact for n < 3.3·10^24."""
    if n < 2:
        return False
    for p in _WITNESSES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in _WITNESSES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def _check_block(block: np.ndarray, k: int, q: int) -> np.ndarray:
    if block.dtype != np.uint64:
        raise MaskingError(f"ciphertext block {k} has dtype {block.dtype}; expected uint64")
    if block.shape != (COEFFS_PER_BLOCK,):
        raise MaskingError(
            f"ciphertext block {k} has shape {block.shape}; expected ({COEFFS_PER_BLOCK},)"
        )
    bad = np.flatnonzero(block >= np.uint64(q))
    if bad.size:
        first = int(bad[0])
        raise MaskingError(
            f"ciphertext block {k}: {bad.size} coefficient(s) are not reduced modulo q={q}: "
            f"coefficient {first} is {int(block[first])}"
        )
    return block
