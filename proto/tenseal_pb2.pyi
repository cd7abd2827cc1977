# ruff: noqa
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CKKSVectorProto(_message.Message):
    __slots__ = ("sizes", "ciphertexts", "scale")
    SIZES_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    sizes: _containers.RepeatedScalarFieldContainer[int]
    ciphertexts: _containers.RepeatedScalarFieldContainer[bytes]
    scale: float
    def __init__(self, sizes: _Optional[_Iterable[int]] = ..., ciphertexts: _Optional[_Iterable[bytes]] = ..., scale: _Optional[float] = ...) -> None: ...

class TenSEALPrivateProto(_message.Message):
    __slots__ = ("secret_key", "relin_keys_generated", "galois_keys_generated")
    SECRET_KEY_FIELD_NUMBER: _ClassVar[int]
    RELIN_KEYS_GENERATED_FIELD_NUMBER: _ClassVar[int]
    GALOIS_KEYS_GENERATED_FIELD_NUMBER: _ClassVar[int]
    secret_key: bytes
    relin_keys_generated: bool
    galois_keys_generated: bool
    def __init__(self, secret_key: _Optional[bytes] = ..., relin_keys_generated: _Optional[bool] = ..., galois_keys_generated: _Optional[bool] = ...) -> None: ...

class TenSEALPublicProto(_message.Message):
    __slots__ = ("public_key", "auto_flags", "scale", "relin_keys", "galois_keys")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    AUTO_FLAGS_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    RELIN_KEYS_FIELD_NUMBER: _ClassVar[int]
    GALOIS_KEYS_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    auto_flags: int
    scale: float
    relin_keys: bytes
    galois_keys: bytes
    def __init__(self, public_key: _Optional[bytes] = ..., auto_flags: _Optional[int] = ..., scale: _Optional[float] = ..., relin_keys: _Optional[bytes] = ..., galois_keys: _Optional[bytes] = ...) -> None: ...

class TenSEALContextProto(_message.Message):
    __slots__ = ("encryption_parameters", "public_context", "private_context", "encryption_type")
    ENCRYPTION_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    ENCRYPTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    encryption_parameters: bytes
    public_context: TenSEALPublicProto
    private_context: TenSEALPrivateProto
    encryption_type: int
    def __init__(self, encryption_parameters: _Optional[bytes] = ..., public_context: _Optional[_Union[TenSEALPublicProto, _Mapping]] = ..., private_context: _Optional[_Union[TenSEALPrivateProto, _Mapping]] = ..., encryption_type: _Optional[int] = ...) -> None: ...
