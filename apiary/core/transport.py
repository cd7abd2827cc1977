"""Chunked gRPC streaming of ciphertext blocks, and the signature on an update header.

The one implementation of the wire protocol in ``proto/apiary.proto``, shared by the
node (swarm relay and client) and the coordinator. A stream is a header, then the blocks'
bytes concatenated and cut into data chunks of at most `CHUNK_BYTES`, so each message stays
well under gRPC's default 4 MiB limit whatever the model size. The receiving side checks
the header before reading any data, never holds more bytes than the header announced,
and checks each block (coefficients reduced mod q, keccak256 equal to its digest) as soon
as it is complete, so a bad stream is refused early and never half-accepted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import eth_abi
import grpc
from eth_account import Account
from eth_account.messages import SignableMessage, encode_defunct
from eth_keys.exceptions import BadSignature
from eth_utils import to_canonical_address
from eth_utils.exceptions import ValidationError

from apiary.core.coefficients import (
    BLOCK_BYTES,
    MalformedCiphertext,
    block_digest,
    block_from_bytes,
)
from apiary.core.errors import ApiaryError
from apiary.wire import apiary_pb2, apiary_pb2_grpc

CHUNK_BYTES = 1 << 20
MAX_MESSAGE_BYTES = 4 << 20
DIGEST_BYTES = 32
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)
UPDATE_DOMAIN = "apiary.v1.UpdateHeader"
"""Domain tag at the start of every signed update message, so that a signature made for
an Apiary update can never be replayed as a signature over anything else."""

_UPDATE_ABI_TYPES = (
    "string", "address", "uint64", "uint32", "address", "uint64", "uint32", "bytes32[]",
)
_INVALID = grpc.StatusCode.INVALID_ARGUMENT
_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED

_Header = TypeVar("_Header", apiary_pb2.UpdateHeader, apiary_pb2.AggregateHeader)
_Chunk = TypeVar("_Chunk", apiary_pb2.UpdateChunk, apiary_pb2.AggregateChunk)
Service = Literal["peer", "coordinator"]


class TransportError(ApiaryError):
    """A refused or failed stream, with the gRPC status code it maps to."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __repr__(self) -> str:
        return f"TransportError({self.code.name}, {self.message!r})"


@dataclass(frozen=True)
class ReceivedUpdate:
    """A complete, validated update: every block matches its digest and is reduced mod q."""

    header: apiary_pb2.UpdateHeader
    blocks: list[bytes]


# --------------------------------------------------------------------------- sending


def update_chunks(
    header: apiary_pb2.UpdateHeader, blocks: Sequence[bytes]
) -> Iterator[apiary_pb2.UpdateChunk]:
    """The messages of an update stream: the header, then data chunks of the blocks."""
    _check_outgoing(header.block_count, blocks)
    return _stream(header, blocks, apiary_pb2.UpdateChunk)


def aggregate_chunks(
    header: apiary_pb2.AggregateHeader, blocks: Sequence[bytes]
) -> Iterator[apiary_pb2.AggregateChunk]:
    """The messages of an aggregate stream: the header, then data chunks of the blocks."""
    _check_outgoing(header.block_count, blocks)
    return _stream(header, blocks, apiary_pb2.AggregateChunk)


def _check_outgoing(block_count: int, blocks: Sequence[bytes]) -> None:
    """Fail in the caller's thread, not inside gRPC's request-consuming thread."""
    if len(blocks) != block_count:
        raise ValueError(f"header announces {block_count} block(s) but {len(blocks)} given")


def _stream(header: Any, blocks: Sequence[bytes], chunk_type: type[_Chunk]) -> Iterator[_Chunk]:
    yield chunk_type(header=header)
    for data in _data_chunks(blocks):
        yield chunk_type(data=data)


def _data_chunks(blocks: Sequence[bytes]) -> Iterator[bytes]:
    buffer = bytearray()
    for block in blocks:
        view = memoryview(block)
        while view:
            take = CHUNK_BYTES - len(buffer)
            buffer += view[:take]
            view = view[take:]
            if len(buffer) == CHUNK_BYTES:
                yield bytes(buffer)
                buffer.clear()
    if buffer:
        yield bytes(buffer)


def push_update(
    target: str,
    header: apiary_pb2.UpdateHeader,
    blocks: Sequence[bytes],
    *,
    timeout: float,
    service: Service = "peer",
    channel_options: Sequence[tuple[str, Any]] = DEFAULT_CHANNEL_OPTIONS,
    credentials: grpc.ChannelCredentials | None = None,
) -> apiary_pb2.PushReply:
    """Stream an update to a relay (``service="peer"``) or the coordinator.

    Raises `TransportError` with the server's status code and details.
    """
    chunks = update_chunks(header, blocks)
    what = f"push of round {header.round} to {service} {target}"
    with _channel(target, channel_options, credentials) as channel:
        if service == "peer":
            push = apiary_pb2_grpc.PeerStub(channel).PushUpdate
        elif service == "coordinator":
            push = apiary_pb2_grpc.CoordinatorStub(channel).PushUpdate
        else:
            raise ValueError(f"service must be 'peer' or 'coordinator', got {service!r}")
        try:
            reply: apiary_pb2.PushReply = push(chunks, timeout=timeout)
        except grpc.RpcError as exc:
            raise _rpc_failure(what, exc) from None
    return reply


def fetch_update(
    target: str,
    round_number: int,
    attempt: int,
    sender: str,
    *,
    modulus: int,
    expected_blocks: int,
    contract_address: str,
    timeout: float,
    channel_options: Sequence[tuple[str, Any]] = DEFAULT_CHANNEL_OPTIONS,
    credentials: grpc.ChannelCredentials | None = None,
) -> ReceivedUpdate:
    """Ask a member for the update of `sender` it holds for (round, attempt).

    The answer is checked as a push is (stream shape, coefficients below q, digests) and
    must carry `sender`'s own signature for that round and attempt, so the member that
    serves it cannot alter it.
    """
    request = apiary_pb2.FetchRequest(round=round_number, attempt=attempt, sender=sender)
    what = f"fetch of {sender}'s update of round {round_number} attempt {attempt} from {target}"
    with _channel(target, channel_options, credentials) as channel:
        stub = apiary_pb2_grpc.PeerStub(channel)
        try:
            update = receive_update(stub.FetchUpdate(request, timeout=timeout),
                                    expected_blocks=expected_blocks, modulus=modulus)
        except grpc.RpcError as exc:
            raise _rpc_failure(what, exc) from None
    header = update.header
    if (header.round, header.attempt) != (round_number, attempt) or (
            header.sender.lower() != sender.lower()):
        raise TransportError(_INVALID, f"{what}: got round {header.round} attempt "
                                       f"{header.attempt} of {header.sender} instead")
    if not verify_update_signature(header, contract_address):
        raise TransportError(grpc.StatusCode.UNAUTHENTICATED,
                             f"{what}: the update is not signed by {sender}")
    return update


def fetch_aggregate(
    target: str,
    round_number: int,
    sender: str,
    *,
    modulus: int,
    timeout: float,
    expected_blocks: int | None = None,
    channel_options: Sequence[tuple[str, Any]] = DEFAULT_CHANNEL_OPTIONS,
    credentials: grpc.ChannelCredentials | None = None,
) -> tuple[apiary_pb2.AggregateHeader, list[bytes]]:
    """Ask the coordinator for a round's aggregate, waiting up to ``timeout`` seconds
    for the round to close; the result is checked as `receive_aggregate` does."""
    request = apiary_pb2.AggregateRequest(round=round_number, sender=sender)
    what = f"aggregate of round {round_number} from coordinator {target}"
    with _channel(target, channel_options, credentials) as channel:
        stub = apiary_pb2_grpc.CoordinatorStub(channel)
        try:
            header, blocks = receive_aggregate(
                stub.GetAggregate(request, timeout=timeout),
                modulus=modulus,
                expected_blocks=expected_blocks,
            )
        except grpc.RpcError as exc:
            raise _rpc_failure(what, exc) from None
    if header.round != round_number:
        raise TransportError(_INVALID, f"{what}: got the aggregate of round {header.round} instead")
    return header, blocks


def _channel(
    target: str,
    options: Sequence[tuple[str, Any]],
    credentials: grpc.ChannelCredentials | None,
) -> grpc.Channel:
    if credentials is None:
        return grpc.insecure_channel(target, options=list(options))
    return grpc.secure_channel(target, credentials, options=list(options))


def _rpc_failure(what: str, exc: grpc.RpcError) -> TransportError:
    if isinstance(exc, grpc.Call):
        code, details = exc.code(), exc.details()
    else:
        code, details = grpc.StatusCode.UNKNOWN, str(exc)
    return TransportError(code, f"{what} failed with {code.name}: {details}")


# --------------------------------------------------------------------------- receiving


def receive_update(
    chunks: Iterable[apiary_pb2.UpdateChunk],
    *,
    expected_blocks: int,
    modulus: int,
    on_header: Callable[[apiary_pb2.UpdateHeader], None] | None = None,
) -> ReceivedUpdate:
    """Read and validate a whole update stream.

    ``on_header`` runs once the header is known to be well formed and before any data is
    read; it may raise `TransportError` to refuse the sender (non-member, closed round)
    without taking in its blocks. Every refusal raises `TransportError`.
    """

    def check(header: apiary_pb2.UpdateHeader) -> None:
        if not header.sender:
            raise TransportError(_INVALID, "the update header names no sender")
        if header.sample_count < 1:
            raise TransportError(
                _INVALID, f"sample_count is {header.sample_count}; it must be at least 1"
            )
        if header.block_count != expected_blocks:
            raise TransportError(
                _INVALID,
                f"wrong block count: got {header.block_count}, the model has {expected_blocks}",
            )
        _check_digests(header)
        if on_header is not None:
            on_header(header)

    header, blocks = _receive(chunks, "UpdateHeader", check, modulus)
    return ReceivedUpdate(header=header, blocks=blocks)


def receive_aggregate(
    chunks: Iterable[apiary_pb2.AggregateChunk],
    *,
    modulus: int,
    expected_blocks: int | None = None,
) -> tuple[apiary_pb2.AggregateHeader, list[bytes]]:
    """Read and validate a whole aggregate stream (digests, coefficients mod q).

    Pass ``expected_blocks`` to refuse an aggregate of the wrong size before reading it.
    """

    def check(header: apiary_pb2.AggregateHeader) -> None:
        if header.weight_sum < 1:
            raise TransportError(_INVALID, "the aggregate header has a weight_sum of 0")
        if not header.contributors:
            raise TransportError(_INVALID, "the aggregate header lists no contributors")
        if header.block_count < 1:
            raise TransportError(_INVALID, "the aggregate header announces no blocks")
        if expected_blocks is not None and header.block_count != expected_blocks:
            raise TransportError(
                _INVALID,
                f"wrong block count: got {header.block_count}, the model has {expected_blocks}",
            )
        _check_digests(header)

    return _receive(chunks, "AggregateHeader", check, modulus)


def _check_digests(header: apiary_pb2.UpdateHeader | apiary_pb2.AggregateHeader) -> None:
    if len(header.block_digests) != header.block_count:
        raise TransportError(
            _INVALID,
            f"the header lists {len(header.block_digests)} digest(s) "
            f"for {header.block_count} block(s)",
        )
    for i, digest in enumerate(header.block_digests):
        if len(digest) != DIGEST_BYTES:
            raise TransportError(
                _INVALID, f"digest {i} is {len(digest)} bytes; a keccak256 digest is 32"
            )


def _receive(
    chunks: Iterable[Any],
    header_name: str,
    check: Callable[[_Header], None],
    modulus: int,
) -> tuple[_Header, list[bytes]]:
    iterator = iter(chunks)
    first = next(iterator, None)
    if first is None:
        raise TransportError(_INVALID, f"empty stream: expected an {header_name} first")
    if first.WhichOneof("part") != "header":
        raise TransportError(
            _INVALID, f"the stream must start with an {header_name}, not a data chunk"
        )
    header: _Header = first.header
    check(header)
    reader = _BlockReader(list(header.block_digests), modulus)
    for chunk in iterator:
        part = chunk.WhichOneof("part")
        if part == "header":
            raise TransportError(_INVALID, f"a second {header_name} in the stream")
        if part != "data":
            raise TransportError(_INVALID, "a chunk with neither header nor data")
        reader.feed(chunk.data)
    return header, reader.finish()


class _BlockReader:
    """Cuts data chunks into blocks and checks each block as soon as it is complete."""

    def __init__(self, digests: list[bytes], modulus: int) -> None:
        self._digests = digests
        self._modulus = modulus
        self._expected = len(digests) * BLOCK_BYTES
        self._received = 0
        self._buffer = bytearray()
        self.blocks: list[bytes] = []

    def feed(self, data: bytes) -> None:
        if len(data) > CHUNK_BYTES:
            raise TransportError(
                _EXHAUSTED,
                f"a data chunk of {len(data)} bytes exceeds the {CHUNK_BYTES}-byte limit",
            )
        if self._received + len(data) > self._expected:
            raise TransportError(
                _EXHAUSTED,
                f"the stream carries more than the {len(self._digests)} block(s) "
                f"({self._expected} bytes) its header announced",
            )
        self._received += len(data)
        self._buffer += data
        while len(self._buffer) >= BLOCK_BYTES:
            block = bytes(self._buffer[:BLOCK_BYTES])
            del self._buffer[:BLOCK_BYTES]
            self._check(len(self.blocks), block)
            self.blocks.append(block)

    def finish(self) -> list[bytes]:
        if self._received < self._expected:
            raise TransportError(
                _INVALID,
                f"truncated stream: it ended after {self._received} of {self._expected} bytes "
                f"({len(self.blocks)} of {len(self._digests)} block(s) complete)",
            )
        return self.blocks

    def _check(self, index: int, block: bytes) -> None:
        if block_digest(block) != self._digests[index]:
            raise TransportError(_INVALID, f"block {index} does not match its digest")
        try:
            block_from_bytes(block, self._modulus)
        except MalformedCiphertext as exc:
            raise TransportError(_INVALID, f"block {index} is malformed: {exc}") from None


# --------------------------------------------------------------------------- signing


def update_message(contract_address: str, header: apiary_pb2.UpdateHeader) -> bytes:
    """The bytes a swarm member signs for an update: the ABI encoding of
    (`UPDATE_DOMAIN`, contract, round, attempt, sender, sample_count, block_count, digests).

    Binding the contract address, round and attempt makes a signature useless on another
    deployment, in another round or for another participant set; the signature field itself
    is not included.
    """
    digests = list(header.block_digests)
    for i, digest in enumerate(digests):
        if len(digest) != DIGEST_BYTES:
            raise ValueError(f"digest {i} is {len(digest)} bytes; a keccak256 digest is 32")
    return eth_abi.encode(
        _UPDATE_ABI_TYPES,
        [
            UPDATE_DOMAIN,
            _address(contract_address, "contract address"),
            header.round,
            header.attempt,
            _address(header.sender, "sender"),
            header.sample_count,
            header.block_count,
            digests,
        ],
    )


def sign_update(
    header: apiary_pb2.UpdateHeader, contract_address: str, private_key: str | bytes
) -> apiary_pb2.UpdateHeader:
    """A copy of ``header`` with its EIP-191 signature; an empty sender becomes the key's
    address, a sender that is not the key's address is refused."""
    account = Account.from_key(private_key)
    if header.sender and header.sender.lower() != account.address.lower():
        raise ValueError(
            f"the header's sender is {header.sender} but the key belongs to {account.address}"
        )
    signed = apiary_pb2.UpdateHeader()
    signed.CopyFrom(header)
    signed.sender = header.sender or account.address
    signed.ClearField("signature")
    message = _signable(contract_address, signed)
    signed.signature = bytes(Account.sign_message(message, account.key).signature)
    return signed


def verify_update_signature(header: apiary_pb2.UpdateHeader, contract_address: str) -> bool:
    """True when ``header.signature`` was made by the key of ``header.sender``
    over this header's content for this contract."""
    _address(contract_address, "contract address")
    if len(header.signature) != 65:
        return False
    try:
        recovered = Account.recover_message(
            _signable(contract_address, header), signature=header.signature
        )
    except (ValueError, TypeError, BadSignature, ValidationError):
        return False
    return bool(recovered.lower() == header.sender.lower())


def _signable(contract_address: str, header: apiary_pb2.UpdateHeader) -> SignableMessage:
    return encode_defunct(primitive=update_message(contract_address, header))


def _address(value: str, what: str) -> bytes:
    try:
        return bytes(to_canonical_address(value))
    except (ValueError, TypeError):
        raise ValueError(f"{what} {value!r} is not an Ethereum address") from None
