# ruff: noqa
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class UpdateHeader(_message.Message):
    __slots__ = ("round", "sender", "sample_count", "block_count", "block_digests", "signature", "attempt")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    BLOCK_COUNT_FIELD_NUMBER: _ClassVar[int]
    BLOCK_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    round: int
    sender: str
    sample_count: int
    block_count: int
    block_digests: _containers.RepeatedScalarFieldContainer[bytes]
    signature: bytes
    attempt: int
    def __init__(self, round: _Optional[int] = ..., sender: _Optional[str] = ..., sample_count: _Optional[int] = ..., block_count: _Optional[int] = ..., block_digests: _Optional[_Iterable[bytes]] = ..., signature: _Optional[bytes] = ..., attempt: _Optional[int] = ...) -> None: ...

class UpdateChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: UpdateHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[UpdateHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PushReply(_message.Message):
    __slots__ = ("round", "blocks_received")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    round: int
    blocks_received: int
    def __init__(self, round: _Optional[int] = ..., blocks_received: _Optional[int] = ...) -> None: ...

class AggregateRequest(_message.Message):
    __slots__ = ("round", "sender")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    round: int
    sender: str
    def __init__(self, round: _Optional[int] = ..., sender: _Optional[str] = ...) -> None: ...

class AggregateHeader(_message.Message):
    __slots__ = ("round", "weight_sum", "block_count", "block_digests", "contributors")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_SUM_FIELD_NUMBER: _ClassVar[int]
    BLOCK_COUNT_FIELD_NUMBER: _ClassVar[int]
    BLOCK_DIGESTS_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTORS_FIELD_NUMBER: _ClassVar[int]
    round: int
    weight_sum: int
    block_count: int
    block_digests: _containers.RepeatedScalarFieldContainer[bytes]
    contributors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, round: _Optional[int] = ..., weight_sum: _Optional[int] = ..., block_count: _Optional[int] = ..., block_digests: _Optional[_Iterable[bytes]] = ..., contributors: _Optional[_Iterable[str]] = ...) -> None: ...

class AggregateChunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: AggregateHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[AggregateHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class CoordinatorStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CoordinatorStatus(_message.Message):
    __slots__ = ("round", "param_count", "members", "last_aggregated_round")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PARAM_COUNT_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    LAST_AGGREGATED_ROUND_FIELD_NUMBER: _ClassVar[int]
    round: int
    param_count: int
    members: _containers.RepeatedScalarFieldContainer[str]
    last_aggregated_round: int
    def __init__(self, round: _Optional[int] = ..., param_count: _Optional[int] = ..., members: _Optional[_Iterable[str]] = ..., last_aggregated_round: _Optional[int] = ...) -> None: ...

class KeyDelivery(_message.Message):
    __slots__ = ("epoch", "ephemeral_public", "nonce", "ciphertext")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    EPHEMERAL_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    ephemeral_public: bytes
    nonce: bytes
    ciphertext: bytes
    def __init__(self, epoch: _Optional[int] = ..., ephemeral_public: _Optional[bytes] = ..., nonce: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class KeyReceipt(_message.Message):
    __slots__ = ("epoch",)
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    def __init__(self, epoch: _Optional[int] = ...) -> None: ...

class FetchRequest(_message.Message):
    __slots__ = ("round", "attempt", "sender")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    round: int
    attempt: int
    sender: str
    def __init__(self, round: _Optional[int] = ..., attempt: _Optional[int] = ..., sender: _Optional[str] = ...) -> None: ...
