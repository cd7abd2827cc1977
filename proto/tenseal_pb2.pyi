# ruff: noqa
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

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
