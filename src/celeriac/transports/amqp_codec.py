"""AMQP field tables (message headers) and basic properties, encoded and decoded here.

pika 1.x falls short for Celery's messages on two counts: it cannot encode a float or a
tuple (Celery's ``timelimit`` is ``(1.5, None)`` when given in seconds), and it decodes a
double as an int (1.5 arrives as 1). These functions write and read what py-amqp (Celery's
client) does, and they are faster than pika's: headers are most of the bytes a task message
carries, and both ends of the transport's network thread spend their time on them.

pika looks its table decoder up in its own module on each use, so installing
``decode_table``/``decode_value`` there (``install``) fixes every table it reads: message
headers, nested tables and arrays, and the broker's method arguments.
"""

from __future__ import annotations

import calendar
import struct
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pika
import pika.data
from pika.exceptions import InvalidFieldTypeException

_pack = struct.pack
_unpack_from = struct.unpack_from
_U32 = struct.Struct(">I")
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1

_B = pika.BasicProperties
_STRING_FIELDS_BEFORE = (
    (_B.FLAG_CONTENT_TYPE, "content_type"),
    (_B.FLAG_CONTENT_ENCODING, "content_encoding"),
)
_STRING_FIELDS_AFTER = (
    (_B.FLAG_CORRELATION_ID, "correlation_id"),
    (_B.FLAG_REPLY_TO, "reply_to"),
    (_B.FLAG_EXPIRATION, "expiration"),
    (_B.FLAG_MESSAGE_ID, "message_id"),
)


class WireProperties(pika.BasicProperties):
    """Basic properties encoded with this module's table encoder."""

    def encode(self) -> list[bytes]:
        out = bytearray(b"\0\0")
        flags = 0
        for flag, name in _STRING_FIELDS_BEFORE:
            value = getattr(self, name)
            if value is not None:
                flags |= flag
                _short_into(out, value)
        if self.headers is not None:
            flags |= _B.FLAG_HEADERS
            _table_into(out, self.headers)
        if self.delivery_mode is not None:
            flags |= _B.FLAG_DELIVERY_MODE
            out.append(int(self.delivery_mode))
        if self.priority is not None:
            flags |= _B.FLAG_PRIORITY
            out.append(self.priority)
        for flag, name in _STRING_FIELDS_AFTER:
            value = getattr(self, name)
            if value is not None:
                flags |= flag
                _short_into(out, value)
        if self.timestamp is not None:
            flags |= _B.FLAG_TIMESTAMP
            out += _pack(">Q", self.timestamp)
        out[0:2] = _pack(">H", flags)
        return [bytes(out)]


# -- encoding -------------------------------------------------------------------------------
def _short_into(out: bytearray, value: str) -> None:
    data = value.encode()
    if len(data) > 255:
        raise ValueError(f"AMQP short string longer than 255 bytes: {value[:40]!r}...")
    out.append(len(data))
    out += data


def encode_table(table: Mapping[str, Any]) -> bytes:
    """``table`` as an AMQP field table (with its length prefix)."""
    out = bytearray()
    _table_into(out, table)
    return bytes(out)


#: Header names seen before, encoded (a task message repeats the same twenty names).
_KEYS: dict[str, bytes] = {}
_MAX_KEYS = 1024


def _key(key: str) -> bytes:
    data = key.encode()
    if len(data) > 255:
        raise ValueError(f"AMQP header name longer than 255 bytes: {key[:40]!r}...")
    encoded = bytes((len(data),)) + data
    if len(_KEYS) < _MAX_KEYS:
        _KEYS[key] = encoded
    return encoded


def _table_into(out: bytearray, table: Mapping[str, Any]) -> None:
    start = len(out)
    out += b"\0\0\0\0"
    keys = _KEYS
    for key, value in table.items():
        out += keys.get(key) or _key(key)
        # The common cases inline: most header values are strings or null.
        if value.__class__ is str:
            data = value.encode()
            out += b"S"
            out += _U32.pack(len(data))
            out += data
        elif value is None:
            out += b"V"
        else:
            _value_into(out, value)
    out[start : start + 4] = _U32.pack(len(out) - start - 4)


def _value_into(out: bytearray, value: Any) -> None:  # noqa: C901, PLR0912 (one branch per type)
    if isinstance(value, str):
        data = value.encode()
        out += b"S"
        out += _U32.pack(len(data))
        out += data
    elif value is None:
        out += b"V"
    elif isinstance(value, bool):
        out += b"t\x01" if value else b"t\x00"
    elif isinstance(value, int):
        # A comparison, not ``in range(...)``: pika's ``long`` is an int subclass, and range
        # membership of a subclass instance is a linear scan (billions of steps).
        if _INT32_MIN <= value <= _INT32_MAX:
            out += _pack(">ci", b"I", value)
        else:
            out += _pack(">cq", b"l", value)
    elif isinstance(value, float):
        out += _pack(">cd", b"d", value)
    elif isinstance(value, Mapping):
        out += b"F"
        _table_into(out, value)
    elif isinstance(value, list | tuple):
        out += b"A"
        start = len(out)
        out += b"\0\0\0\0"
        for item in value:
            _value_into(out, item)
        out[start : start + 4] = _U32.pack(len(out) - start - 4)
    elif isinstance(value, bytes | bytearray):
        out += b"x"
        out += _U32.pack(len(value))
        out += value
    elif isinstance(value, Decimal):
        places = max(0, -int(value.as_tuple().exponent))
        out += _pack(">cBi", b"D", places, int(value.scaleb(places)))
    elif isinstance(value, datetime):
        out += _pack(">cQ", b"T", calendar.timegm(value.utctimetuple()))
    else:
        raise TypeError(f"cannot send {type(value).__name__} in an AMQP header: {value!r}")


# -- decoding -------------------------------------------------------------------------------
_FIXED: dict[int, tuple[str, int]] = {
    ord("b"): (">b", 1),
    ord("B"): (">B", 1),
    ord("U"): (">h", 2),
    ord("u"): (">H", 2),
    ord("s"): (">h", 2),
    ord("I"): (">i", 4),
    ord("i"): (">I", 4),
    ord("L"): (">Q", 8),
    ord("l"): (">q", 8),
    ord("f"): (">f", 4),
    ord("d"): (">d", 8),
}
_S, _V, _T_BOOL, _A, _F, _X, _D, _T = (ord(c) for c in "SVtAFxDT")


def decode_table(encoded: bytes, offset: int) -> tuple[dict[str, Any], int]:
    """The table at ``offset`` (length prefix first) and the offset after it."""
    end = offset + 4 + _U32.unpack_from(encoded, offset)[0]
    offset += 4
    result: dict[str, Any] = {}
    while offset < end:
        size = encoded[offset]
        key = encoded[offset + 1 : offset + 1 + size].decode("utf-8", "replace")
        result[key], offset = decode_value(encoded, offset + 1 + size)
    return result, offset


def decode_value(encoded: bytes, offset: int) -> tuple[Any, int]:
    """The field value at ``offset`` (type byte first) and the offset after it.

    Raises:
        InvalidFieldTypeException: An unknown type byte.
    """
    kind = encoded[offset]
    offset += 1
    if kind == _S:
        size = _U32.unpack_from(encoded, offset)[0]
        raw = encoded[offset + 4 : offset + 4 + size]
        try:
            return raw.decode(), offset + 4 + size
        except UnicodeDecodeError:
            return raw, offset + 4 + size
    if kind == _V:
        return None, offset
    fixed = _FIXED.get(kind)
    if fixed is not None:
        return _unpack_from(fixed[0], encoded, offset)[0], offset + fixed[1]
    if kind == _T_BOOL:
        return encoded[offset] != 0, offset + 1
    if kind == _F:
        return decode_table(encoded, offset)
    if kind == _A:
        end = offset + 4 + _U32.unpack_from(encoded, offset)[0]
        offset += 4
        items: list[Any] = []
        while offset < end:
            item, offset = decode_value(encoded, offset)
            items.append(item)
        return items, offset
    if kind == _X:
        size = _U32.unpack_from(encoded, offset)[0]
        return bytes(encoded[offset + 4 : offset + 4 + size]), offset + 4 + size
    if kind == _T:
        seconds = _unpack_from(">Q", encoded, offset)[0]
        return datetime.fromtimestamp(seconds, UTC), offset + 8
    if kind == _D:
        places, raw = _unpack_from(">Bi", encoded, offset)
        return Decimal(raw).scaleb(-places), offset + 5
    raise InvalidFieldTypeException(bytes((kind,)))


def install() -> None:
    """Make pika read tables (headers, arguments) with this module's decoder."""
    pika.data.decode_table = decode_table  # type: ignore[assignment]  # str keys: narrower
    pika.data.decode_value = decode_value
