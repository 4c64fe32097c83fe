"""Turning message bodies into bytes and back, the way Celery and kombu do on the wire.

A :class:`Serializer` pairs a name (``json``) with the MIME content type written in the
message's ``content-type`` property (``application/json``) and its encode/decode functions.
The module-level :data:`registry` knows Celery's four: ``json`` (the default and the only one
accepted unless configured otherwise), ``pickle``, ``yaml`` and ``msgpack``. The last two are
registered by name from the start but import their package on first use, so a missing package
only matters to those who use it.

JSON carries a few extra Python types as ``{"__type__": marker, "__value__": value}`` objects,
exactly as kombu 5.3+ does, so bodies round-trip with Celery workers: ``datetime``, ``date``,
``time``, ``decimal``, ``uuid`` (``{"hex": ..., "version": ...}``), ``bytes`` (UTF-8 text) and
``base64`` (bytes that are not UTF-8). Sets are not JSON and fail to encode, as in kombu.

:func:`loads` checks the content type against the accept list *before* decoding anything, so
a pickle body is never unpickled by a consumer that did not opt in to pickle.
"""

from __future__ import annotations

import base64
import difflib
import json
import pickle
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from celeriac.exceptions import (
    CeleriacError,
    ContentDisallowed,
    DecodeError,
    EncodeError,
    ImproperlyConfigured,
    MissingDependency,
)

__all__ = [
    "DEFAULT_ACCEPT",
    "PICKLE_PROTOCOL",
    "TRUSTED_CONTENT_TYPES",
    "Serializer",
    "SerializerRegistry",
    "accept_content_types",
    "dumps",
    "loads",
    "register_json_type",
    "registry",
]

#: What consumers accept unless configured otherwise: JSON only.
DEFAULT_ACCEPT: frozenset[str] = frozenset({"application/json"})
#: Raw payloads that are never refused by an accept list (they are not decoded, only returned).
TRUSTED_CONTENT_TYPES: frozenset[str] = frozenset(
    {"application/data", "application/text", "text/plain"}
)
#: Kombu's default pickle protocol; every Python 3.4+ reader understands it.
PICKLE_PROTOCOL = 4
_BINARY_ENCODINGS = frozenset({"binary", "ascii-8bit"})


@dataclass(frozen=True, slots=True)
class Serializer:
    """One way of turning values into message bodies.

    Attributes:
        name: Short name used in settings (``json``).
        content_type: MIME type written to the message (``application/json``).
        content_encoding: ``utf-8`` for text formats, ``binary`` otherwise.
        encode: Turns a value into the body.
        decode: Turns a body back into a value.
    """

    name: str
    content_type: str
    content_encoding: str
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]


# --- JSON ---------------------------------------------------------------------------------

_JsonEncoder = Callable[[Any], dict[str, Any]]
_JSON_ENCODERS: dict[type, _JsonEncoder] = {}
_JSON_DECODERS: dict[str, Callable[[Any], Any]] = {}


def _tagged(marker: str, value: Any) -> dict[str, Any]:
    return {"__type__": marker, "__value__": value}


def register_json_type(
    cls: type, marker: str, encode: Callable[[Any], Any], decode: Callable[[Any], Any]
) -> None:
    """Teach the JSON serializer an extra type, carried as ``{"__type__": marker, ...}``.

    Args:
        cls: The Python type (subclasses match too, in registration order).
        marker: The ``__type__`` value; must match what other readers expect.
        encode: Turns an instance into a JSON-able ``__value__``.
        decode: Turns the ``__value__`` back into an instance.
    """
    _JSON_ENCODERS[cls] = lambda obj: _tagged(marker, encode(obj))
    _JSON_DECODERS[marker] = decode


def _encode_bytes(data: bytes) -> dict[str, Any]:
    try:
        return _tagged("bytes", data.decode("utf-8"))
    except UnicodeDecodeError:
        return _tagged("base64", base64.b64encode(data).decode("ascii"))


def _decode_uuid(value: dict[str, Any]) -> uuid.UUID:
    return uuid.UUID(hex=value["hex"], version=value.get("version"))


# datetime before date: a datetime is also a date, and subclasses match in this order.
register_json_type(datetime, "datetime", datetime.isoformat, datetime.fromisoformat)
register_json_type(date, "date", date.isoformat, date.fromisoformat)
register_json_type(time, "time", time.isoformat, time.fromisoformat)
register_json_type(Decimal, "decimal", str, Decimal)
register_json_type(uuid.UUID, "uuid", lambda u: {"hex": u.hex, "version": u.version}, _decode_uuid)
_JSON_ENCODERS[bytes] = _encode_bytes
_JSON_DECODERS["bytes"] = lambda text: text.encode("utf-8")
_JSON_DECODERS["base64"] = lambda text: base64.b64decode(text.encode("ascii"), validate=True)


def _json_default(obj: Any) -> Any:
    encode = _JSON_ENCODERS.get(type(obj))
    if encode is not None:
        return encode(obj)
    reducer = getattr(obj, "__json__", None)
    if reducer is not None:
        return reducer()
    for cls, encode in _JSON_ENCODERS.items():
        if isinstance(obj, cls):
            return encode(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def _json_object_hook(obj: dict[str, Any]) -> Any:
    if len(obj) == 2 and "__type__" in obj and "__value__" in obj:
        decode = _JSON_DECODERS.get(obj["__type__"])
        if decode is None:
            raise ValueError(f"unsupported JSON __type__ marker {obj['__type__']!r}")
        return decode(obj["__value__"])
    return obj


_json_encoder = json.JSONEncoder(separators=(",", ":"), default=_json_default)
_json_decoder = json.JSONDecoder(object_hook=_json_object_hook)


def _json_dumps(data: Any) -> bytes:
    return _json_encoder.encode(data).encode("utf-8")


def _json_loads(body: bytes) -> Any:
    return _json_decoder.decode(body.decode("utf-8"))


# --- the other built-ins -------------------------------------------------------------------


def _pickle_dumps(data: Any) -> bytes:
    return pickle.dumps(data, protocol=PICKLE_PROTOCOL)


def _load_yaml() -> Serializer:
    try:
        import yaml
    except ImportError as exc:
        raise MissingDependency(
            "The yaml serializer needs PyYAML: pip install celeriac[yaml]"
        ) from exc

    def encode(data: Any) -> bytes:
        return yaml.safe_dump(data, allow_unicode=True).encode("utf-8")

    return Serializer("yaml", "application/x-yaml", "utf-8", encode, yaml.safe_load)


def _load_msgpack() -> Serializer:
    try:
        import msgpack
    except ImportError as exc:
        raise MissingDependency(
            "The msgpack serializer needs msgpack: pip install celeriac[msgpack]"
        ) from exc

    def encode(data: Any) -> bytes:
        body: bytes = msgpack.packb(data, use_bin_type=True)
        return body

    def decode(body: bytes) -> Any:
        return msgpack.unpackb(body, raw=False)

    return Serializer("msgpack", "application/x-msgpack", "binary", encode, decode)


# --- the registry --------------------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    name: str
    content_type: str
    aliases: tuple[str, ...]
    serializer: Serializer | None
    loader: Callable[[], Serializer]


def _unknown(kind: str, name: str, known: Iterable[str]) -> str:
    choices = sorted(known)
    close = difflib.get_close_matches(name, choices, n=3)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    return f"Unknown {kind} {name!r}{hint} (known: {', '.join(choices) or 'none'})"


class SerializerRegistry:
    """Serializers by name, alias and content type, some of them loaded on first use."""

    def __init__(self) -> None:
        """Create an empty registry (see :meth:`with_builtins` for Celery's four)."""
        self._names: dict[str, _Entry] = {}  # names and aliases
        self._types: dict[str, _Entry] = {}
        self._ready_names: dict[str, Serializer] = {}  # the hot paths' one-lookup caches
        self._ready_types: dict[str, Serializer] = {}

    @classmethod
    def with_builtins(cls) -> SerializerRegistry:
        """Return a registry with ``json``, ``pickle``, ``yaml`` and ``msgpack``."""
        reg = cls()
        reg.register(Serializer("json", "application/json", "utf-8", _json_dumps, _json_loads))
        reg.register(
            Serializer(
                "pickle", "application/x-python-serialize", "binary", _pickle_dumps, pickle.loads
            )
        )
        reg.register_lazy("yaml", "application/x-yaml", _load_yaml)
        reg.register_lazy("msgpack", "application/x-msgpack", _load_msgpack)
        return reg

    def register(self, serializer: Serializer, aliases: Iterable[str] = ()) -> None:
        """Add a serializer, replacing any registered under the same name.

        Args:
            serializer: The serializer.
            aliases: Other names that select it.
        """
        ready = serializer
        self._add(_Entry(ready.name, ready.content_type, tuple(aliases), ready, lambda: ready))

    def register_lazy(
        self,
        name: str,
        content_type: str,
        loader: Callable[[], Serializer],
        aliases: Iterable[str] = (),
    ) -> None:
        """Add a serializer whose implementation is built (and imported) on first use.

        Args:
            name: Its name.
            content_type: Its MIME type, known before loading so accept lists can use it.
            loader: Builds the serializer; raises :class:`MissingDependency` if it cannot.
            aliases: Other names that select it.
        """
        self._add(_Entry(name, content_type, tuple(aliases), None, loader))

    def _add(self, entry: _Entry) -> None:
        if entry.name in self._names:
            self.unregister(entry.name)
        for key in (entry.name, *entry.aliases):
            self._names[key] = entry
        self._types[entry.content_type] = entry
        if entry.serializer is not None:
            self._mark_ready(entry, entry.serializer)

    def _mark_ready(self, entry: _Entry, serializer: Serializer) -> None:
        entry.serializer = serializer
        for key in (entry.name, *entry.aliases):
            self._ready_names[key] = serializer
        self._ready_types[entry.content_type] = serializer

    def unregister(self, name: str) -> None:
        """Remove a serializer (by name or alias) with all its aliases.

        Raises:
            ImproperlyConfigured: No serializer has that name.
        """
        entry = self._entry(name)
        for key in (entry.name, *entry.aliases):
            if self._names.get(key) is entry:
                del self._names[key]
                self._ready_names.pop(key, None)
        if self._types.get(entry.content_type) is entry:
            del self._types[entry.content_type]
            self._ready_types.pop(entry.content_type, None)

    def names(self) -> list[str]:
        """Return the registered names and aliases, sorted."""
        return sorted(self._names)

    def _entry(self, name: str) -> _Entry:
        entry = self._names.get(name)
        if entry is None:
            raise ImproperlyConfigured(_unknown("serializer", name, self._names))
        return entry

    def _resolve(self, entry: _Entry) -> Serializer:
        serializer = entry.serializer
        if serializer is None:
            serializer = entry.loader()
            self._mark_ready(entry, serializer)
        return serializer

    def get(self, name: str) -> Serializer:
        """Return the serializer with this name or alias, loading it if needed.

        Raises:
            ImproperlyConfigured: Unknown name (the message suggests close ones).
            MissingDependency: Its optional package is not installed.
        """
        return self._ready_names.get(name) or self._resolve(self._entry(name))

    def by_content_type(self, content_type: str) -> Serializer:
        """Return the serializer for a MIME type, loading it if needed.

        Raises:
            DecodeError: No serializer handles that content type.
            MissingDependency: Its optional package is not installed.
        """
        entry = self._types.get(content_type)
        if entry is None:
            raise DecodeError(_unknown("content type", content_type, self._types))
        return self._resolve(entry)

    def content_type_of(self, name_or_content_type: str) -> str:
        """Return the MIME type for a serializer name; a MIME type (with ``/``) is returned as is.

        Raises:
            ImproperlyConfigured: Unknown serializer name.
        """
        if "/" in name_or_content_type:
            return name_or_content_type
        return self._entry(name_or_content_type).content_type

    def accept_content_types(self, accept: Iterable[str] | None) -> frozenset[str] | None:
        """Normalise an accept list of names and/or MIME types to MIME types (None stays None).

        Raises:
            ImproperlyConfigured: An entry is an unknown serializer name.
        """
        if accept is None:
            return None
        return frozenset(self.content_type_of(item) for item in accept)

    def dumps(self, data: Any, serializer: str | None = "json") -> tuple[str, str, bytes]:
        """Serialize a value; return ``(content_type, content_encoding, body)``.

        Args:
            data: The value. With ``serializer=None``, bytes are sent as ``application/data``
                and str as ``text/plain``; anything else uses JSON.
            serializer: Name or alias of the serializer; ``raw`` sends bytes or str as is.

        Raises:
            EncodeError: The serializer could not encode the value.
            ImproperlyConfigured: Unknown serializer name.
            MissingDependency: The serializer's optional package is not installed.
        """
        codec = self._ready_names.get(serializer) if serializer else None
        if codec is None:
            if serializer == "raw" or (serializer is None and isinstance(data, (bytes, str))):
                return _raw_dumps(data, serializer)
            codec = self.get(serializer or "json")
        try:
            body = codec.encode(data)
        except CeleriacError:
            raise
        except Exception as exc:
            raise EncodeError(f"Cannot serialize with {codec.name}: {exc}") from exc
        return codec.content_type, codec.content_encoding, body

    def loads(
        self,
        body: bytes,
        content_type: str | None,
        content_encoding: str | None,
        accept: Collection[str] | None = None,
    ) -> Any:
        """Deserialize a message body, refusing content types not in ``accept``.

        Args:
            body: The message body.
            content_type: Its MIME type; missing means raw ``application/data``.
            content_encoding: Its character set, or ``binary``; used for raw payloads.
            accept: Serializer names and/or MIME types to allow; None allows all. Raw
                payloads (``application/data``, ``text/plain``) are always allowed.

        Raises:
            ContentDisallowed: The content type is not accepted (nothing was decoded).
            DecodeError: Unknown content type, or the body is not valid for it.
            MissingDependency: The serializer's optional package is not installed.
        """
        ctype = content_type or "application/data"
        if accept is not None and ctype not in accept and ctype not in TRUSTED_CONTENT_TYPES:
            self._check_accepted(ctype, accept)
        codec = self._ready_types.get(ctype)
        if codec is None:
            if ctype in TRUSTED_CONTENT_TYPES:
                return _raw_loads(body, content_encoding)
            codec = self.by_content_type(ctype)
        try:
            return codec.decode(body)
        except CeleriacError:
            raise
        except Exception as exc:
            raise DecodeError(f"Cannot deserialize {ctype} body: {exc}") from exc

    def _check_accepted(self, content_type: str, accept: Collection[str]) -> None:
        accepted = self.accept_content_types(accept)
        if accepted is not None and content_type not in accepted:
            entry = self._types.get(content_type)
            label = f"{entry.name} ({content_type})" if entry else content_type
            raise ContentDisallowed(
                f"Refusing to deserialize untrusted content of type {label}; "
                f"accepted: {', '.join(sorted(accepted)) or 'nothing'}"
            )


def _raw_dumps(data: Any, serializer: str | None) -> tuple[str, str, bytes]:
    if isinstance(data, bytes):
        return "application/data", "binary", data
    if isinstance(data, str):
        try:
            payload = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise EncodeError(f"Cannot encode text as UTF-8: {exc}") from exc
        return ("text/plain" if serializer is None else "application/data"), "utf-8", payload
    raise EncodeError(f"The raw serializer sends bytes or str, not {type(data).__name__}")


def _raw_loads(body: bytes, content_encoding: str | None) -> bytes | str:
    encoding = (content_encoding or "utf-8").lower()
    if encoding in _BINARY_ENCODINGS or isinstance(body, str):
        return body
    try:
        return body.decode(encoding)
    except (LookupError, UnicodeDecodeError) as exc:
        raise DecodeError(f"Cannot decode raw body as {encoding}: {exc}") from exc


#: The registry the rest of celeriac uses.
registry = SerializerRegistry.with_builtins()
dumps = registry.dumps
loads = registry.loads
accept_content_types = registry.accept_content_types
