"""A small reader of R's ``.rda`` files: enough for a data frame of numeric and factor columns.

R saves data with ``save()`` as a (gzip-, bzip2- or xz-compressed) stream that starts
``RDX2\\n`` or ``RDX3\\n``, then ``X\\n`` (XDR: big-endian) and R's serialisation format
(R Internals, "Serialization Formats"): a header (format version, R versions, and for format 3
the native encoding), then items, each an integer of flags (type in the low byte, "has
attributes" bit 9, "has tag" bit 10) followed by its contents. A saved ``.rda`` is a pairlist
from each object's name to its value.

Only the types a data frame needs are read: NULL, symbols and references to them, pairlists,
character strings and vectors, logical, integer and double vectors, lists. Anything else
raises :class:`~apiary.core.errors.InvalidInput` naming the type.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from apiary.core.errors import InvalidInput

__all__ = ["RVector", "rda_data_frame", "read_rda"]

_NIL, _REF = 254, 255
_SYM, _LIST, _CHAR, _LGL, _INT, _REAL, _STR, _VEC = 1, 2, 9, 10, 13, 14, 16, 19
_NA_INT = -(2**31)
_MAGICS = {b"\xfd7zXZ": lzma.decompress, b"BZh": bz2.decompress, b"\x1f\x8b": gzip.decompress}


@dataclass
class RVector:
    """An R vector: its values (numpy array, or list for character vectors and lists) and its
    attributes by name."""

    values: Any
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Symbol:
    name: str


class _Reader:
    def __init__(self, data: bytes, source: str) -> None:
        self.data, self.pos, self.source = data, 0, source
        self.refs: list[_Symbol] = []

    def _take(self, count: int) -> bytes:
        if self.pos + count > len(self.data):
            raise InvalidInput(f"{self.source}: R data ends early")
        chunk = self.data[self.pos:self.pos + count]
        self.pos += count
        return chunk

    def int(self) -> int:
        return int(struct.unpack(">i", self._take(4))[0])

    def _array(self, dtype: str, size: int) -> np.ndarray:
        length = self.int()
        return np.frombuffer(self._take(length * size), dtype=dtype, count=length).copy()

    def item(self) -> Any:
        flags = self.int()
        kind, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind == _NIL:
            return None
        if kind == _REF:
            index = flags >> 8 or self.int()
            return self.refs[index - 1]
        if kind == _SYM:
            symbol = _Symbol(self.item())
            self.refs.append(symbol)
            return symbol
        if kind == _LIST:
            return self._pairlist(has_attr, has_tag)
        if kind == _CHAR:
            length = self.int()
            return None if length == -1 else self._take(length).decode("utf-8", "replace")
        if kind in (_LGL, _INT):
            values: Any = self._array(">i4", 4).astype(np.int64)
        elif kind == _REAL:
            values = self._array(">f8", 8).astype(np.float64)
        elif kind in (_STR, _VEC):
            values = [self.item() for _ in range(self.int())]
        else:
            raise InvalidInput(f"{self.source}: R type {kind} is not supported by this reader")
        attributes = self._attributes() if has_attr else {}
        return RVector(values, attributes)

    def _pairlist(self, has_attr: bool, has_tag: bool) -> dict[str, Any]:
        """A pairlist as an ordered dict tag → value (the rest of the list follows as cdr)."""
        if has_attr:
            self.item()
        tag = self.item() if has_tag else None
        key = tag.name if isinstance(tag, _Symbol) else f"#{self.pos}"
        out = {key: self.item()}
        rest = self.item()
        if isinstance(rest, dict):
            out.update(rest)
        return out

    def _attributes(self) -> dict[str, Any]:
        attributes = self.item()
        return attributes if isinstance(attributes, dict) else {}


def read_rda(path: Path) -> dict[str, Any]:
    """Every object an ``.rda`` file holds, by name."""
    path = Path(path)
    raw = path.read_bytes()
    for magic, decompress in _MAGICS.items():
        if raw.startswith(magic):
            raw = decompress(raw)
            break
    if raw[:5] not in (b"RDX2\n", b"RDX3\n") or raw[5:7] != b"X\n":
        raise InvalidInput(f"{path}: not an R data file in XDR format (RDX2/RDX3)")
    reader = _Reader(raw[7:], str(path))
    version = reader.int()
    reader.int(), reader.int()  # the writer's and the oldest reader's R versions
    if version == 3:
        reader._take(reader.int())  # native encoding
    objects = reader.item()
    if not isinstance(objects, dict):
        raise InvalidInput(f"{path}: no named objects in the R data file")
    return objects


def rda_data_frame(path: Path, name: str) -> dict[str, np.ndarray | tuple[str, ...]]:
    """The columns of data frame ``name`` in ``path``: numeric columns as arrays, factors as
    integer codes from 0 (``-1`` for NA) with their levels under ``"<column>.levels"``."""
    objects = read_rda(path)
    frame = objects.get(name)
    if not isinstance(frame, RVector) or "data.frame" not in _strings(frame, "class"):
        raise InvalidInput(f"{path}: no data frame named {name!r} (found {sorted(objects)})")
    names = _strings(frame, "names")
    columns: dict[str, np.ndarray | tuple[str, ...]] = {}
    for column, vector in zip(names, frame.values, strict=True):
        if not isinstance(vector, RVector) or not isinstance(vector.values, np.ndarray):
            raise InvalidInput(f"{path}: column {column!r} of {name!r} is not numeric")
        if "factor" in _strings(vector, "class"):
            codes = vector.values.copy()
            codes[codes == _NA_INT] = 0
            columns[column] = codes - 1
            columns[f"{column}.levels"] = _strings(vector, "levels")
        else:
            columns[column] = vector.values
    return columns


def _strings(vector: RVector, attribute: str) -> tuple[str, ...]:
    value = vector.attributes.get(attribute)
    if isinstance(value, RVector) and isinstance(value.values, list):
        return tuple(str(v) for v in value.values)
    return ()
