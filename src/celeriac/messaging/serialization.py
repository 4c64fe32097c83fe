"""Turning message bodies into bytes and back, the way Celery and kombu do on the wire.

A :class:`Serializer` pairs a name (``json``) with the MIME type written in the message's
``content-type`` (``application/json``) and its encode/decode functions. The module-level
:data:`registry` knows Celery's four: ``json`` (the default, and the only one consumers accept
unless configured otherwise), ``pickle``, ``yaml`` and ``msgpack``; the last two are known by
name from the start but import their package only on first use.

JSON carries extra Python types as ``{"__type__": marker, "__value__": value}``, exactly as
kombu 5.3+ does: ``datetime``, ``date``, ``time`` (ISO 8601), ``decimal`` (str), ``uuid``
(``{"hex": ..., "version": ...}``), ``bytes`` (UTF-8 text) and ``base64`` (other bytes).
Tuples become lists; sets fail to encode, as in kombu.

:func:`loads` checks the content type against the accept list *before* decoding anything, so a
pickle body is never unpickled by a consumer that did not opt in to pickle.
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
from functools import partial
from typing import Any

from celeriac.exceptions import (
    CeleriacError,
    ContentDisallowed,
    DecodeError,
    EncodeError,
    ImproperlyConfigured,
    MissingDependency,
)

#: What consumers accept unless configured otherwise: JSON only.
DEFAULT_ACCEPT: frozenset[str] = frozenset({"application/json"})
#: Raw payloads no accept list refuses: they are returned as bytes or str, never decoded.
TRUSTED_CONTENT_TYPES = frozenset({"application/data", "application/text", "text/plain"})
#: Kombu's pickle protocol; every Python 3.4+ reader understands it.
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


# --- JSON ----------------------------------------------------------------------------------

_JSON_ENCODERS: dict[type, Callable[[Any], dict[str, Any]]] = {}
_JSON_DECODERS: dict[str, Callable[[Any], Any]] = {}


def _tagged(marker: str, value: Any) -> dict[str, Any]:
    return {"__type__": marker, "__value__": value}


def register_json_type(
    cls: type, marker: str, encode: Callable[[Any], Any], decode: Callable[[Any], Any]
) -> None:
    """Teach the JSON serializer a type, sent as ``{"__type__": marker, "__value__": ...}``.

    Args:
        cls: The type; subclasses match too, in registration order.
        marker: The ``__type__`` value other readers know it by.
        encode: Turns an instance into a JSON-able ``__value__``.
        decode: Turns a ``__value__`` back into an instance.
    """
    _JSON_ENCODERS[cls] = lambda obj: _tagged(marker, encode(obj))
    _JSON_DECODERS[marker] = decode


def _encode_bytes(data: bytes) -> dict[str, Any]:
    try:
        return _tagged("bytes", data.decode("utf-8"))
    except UnicodeDecodeError:
        return _tagged("base64", base64.b64encode(data).decode("ascii"))


def _decode_uuid(value: dict[str, Any]) -> uuid.UUID:
    # "version" repeats bits already in "hex"; passing it on would refuse v6-v8 on Python < 3.14.
    return uuid.UUID(hex=value["hex"])


# datetime before date: a datetime is a date too, and subclasses match in this order.
register_json_type(datetime, "datetime", datetime.isoformat, datetime.fromisoformat)
register_json_type(date, "date", date.isoformat, date.fromisoformat)
register_json_type(time, "time", time.isoformat, time.fromisoformat)
register_json_type(Decimal, "decimal", str, Decimal)
register_json_type(uuid.UUID, "uuid", lambda u: {"hex": u.hex, "version": u.version}, _decode_uuid)
_JSON_ENCODERS[bytes] = _encode_bytes
_JSON_DECODERS["bytes"] = lambda text: text.encode("utf-8")
_JSON_DECODERS["base64"] = lambda text: base64.b64decode(text, validate=True)


def _json_default(obj: Any) -> Any:
    encode = _JSON_ENCODERS.get(type(obj))
    if encode is not None:
        return encode(obj)
    reducer = getattr(obj, "__json__", None)  # kombu's hook for custom classes
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
    encode = partial(msgpack.packb, use_bin_type=True)
    return Serializer(
        "msgpack", "application/x-msgpack", "binary", encode, partial(msgpack.unpackb, raw=False)
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


# --- the registry --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    name: str
    content_type: str
    aliases: tuple[str, ...]
    load: Callable[[], Serializer]


def _unknown(kind: str, name: str, known: Iterable[str]) -> str:
    choices = sorted(known)
    close = difflib.get_close_matches(name, choices, n=3)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    return f"Unknown {kind} {name!r}{hint} (known: {', '.join(choices) or 'none'})"


class SerializerRegistry:
    """Serializers by name, alias and content type, some of them loaded on first use."""

    def __init__(self) -> None:
        """Create an empty registry (:meth:`with_builtins` makes one with Celery's four)."""
        self._names: dict[str, _Entry] = {}  # names and aliases
        self._types: dict[str, _Entry] = {}
        self._ready_names: dict[str, Serializer] = {}  # loaded ones: the hot paths' caches
        self._ready_types: dict[str, Serializer] = {}

    @classmethod
    def with_builtins(cls) -> SerializerRegistry:
        """Return a new registry with ``json``, ``pickle``, ``yaml`` and ``msgpack``."""
        reg = cls()
        reg.register(Serializer("json", "application/json", "utf-8", _json_dumps, _json_loads))
        pickle_dumps = partial(pickle.dumps, protocol=PICKLE_PROTOCOL)
        pickle_ct = "application/x-python-serialize"
        reg.register(Serializer("pickle", pickle_ct, "binary", pickle_dumps, pickle.loads))
        reg.register_lazy("yaml", "application/x-yaml", _load_yaml)
        reg.register_lazy("msgpack", "application/x-msgpack", _load_msgpack)
        return reg

    def register(self, serializer: Serializer, aliases: Iterable[str] = ()) -> None:
        """Add a serializer (and other names for it), replacing any other of the same name."""
        self.register_lazy(serializer.name, serializer.content_type, lambda: serializer, aliases)
        self._resolve(self._names[serializer.name])

    def register_lazy(
        self,
        name: str,
        content_type: str,
        loader: Callable[[], Serializer],
        aliases: Iterable[str] = (),
    ) -> None:
        """Add a serializer that is built, importing its package, only when first used.

        Args:
            name: Its name.
            content_type: Its MIME type, known up front so accept lists can name it.
            loader: Builds the serializer; raises :class:`MissingDependency` if it cannot.
            aliases: Other names that select it.
        """
        if name in self._names:
            self.unregister(name)
        entry = _Entry(name, content_type, tuple(aliases), loader)
        for key in (name, *entry.aliases):
            self._names[key] = entry
            self._ready_names.pop(key, None)
        self._types[content_type] = entry
        self._ready_types.pop(content_type, None)

    def unregister(self, name: str) -> None:
        """Remove a serializer, given its name or an alias, with all its aliases.

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

    def _entry(self, name: str) -> _Entry:
        entry = self._names.get(name)
        if entry is None:
            raise ImproperlyConfigured(_unknown("serializer", name, self._names))
        return entry

    def _resolve(self, entry: _Entry) -> Serializer:
        serializer = self._ready_names.get(entry.name)
        if serializer is None:
            serializer = entry.load()
            for key in (entry.name, *entry.aliases):
                self._ready_names[key] = serializer
            self._ready_types[entry.content_type] = serializer
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
        """Return a serializer name's MIME type; a MIME type (it has a ``/``) comes back as is.

        Raises:
            ImproperlyConfigured: Unknown serializer name.
        """
        if "/" in name_or_content_type:
            return name_or_content_type
        return self._entry(name_or_content_type).content_type

    def accept_content_types(self, accept: Iterable[str] | None) -> frozenset[str] | None:
        """Normalise an accept list of names and/or MIME types to MIME types; None stays None.

        Raises:
            ImproperlyConfigured: An item is an unknown serializer name.
        """
        if accept is None:
            return None
        return frozenset(self.content_type_of(item) for item in accept)

    def check_accept(self, content_type: str | None, accept: Collection[str] | None) -> None:
        """Refuse a content type that ``accept`` (names and/or MIME types; None: all) forbids.

        A missing content type means ``application/data``; raw payloads are always allowed.

        Raises:
            ContentDisallowed: The content type is not accepted.
            ImproperlyConfigured: ``accept`` names an unknown serializer.
        """
        ctype = content_type or "application/data"
        if accept is None or ctype in accept or ctype in TRUSTED_CONTENT_TYPES:
            return
        accepted = self.accept_content_types(accept) or frozenset()
        if ctype not in accepted:
            entry = self._types.get(ctype)
            label = f"{entry.name} ({ctype})" if entry else ctype
            raise ContentDisallowed(
                f"Refusing to deserialize untrusted content of type {label}; "
                f"accepted: {', '.join(sorted(accepted)) or 'nothing'}"
            )

    def dumps(self, data: Any, serializer: str | None = "json") -> tuple[str, str, bytes]:
        """Serialize a value; return ``(content_type, content_encoding, body)``.

        Args:
            data: The value. With ``serializer=None``, bytes go as ``application/data`` and
                str as ``text/plain``; anything else as JSON.
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
        """Deserialize a message body, first refusing content types not in ``accept``.

        Args:
            body: The message body.
            content_type: Its MIME type; missing means raw ``application/data``.
            content_encoding: Its charset, or ``binary``; raw payloads are decoded with it.
            accept: Serializer names and/or MIME types to allow; None allows all. Raw
                payloads (``application/data``, ``text/plain``) are always allowed.

        Raises:
            ContentDisallowed: The content type is not accepted (nothing was decoded).
            DecodeError: Unknown content type, or a body that is not valid for it.
            MissingDependency: The serializer's optional package is not installed.
        """
        ctype = content_type or "application/data"
        if accept is not None and ctype not in accept:
            self.check_accept(ctype, accept)
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


#: The registry the rest of celeriac uses; the functions below are its bound methods.
registry = SerializerRegistry.with_builtins()
dumps = registry.dumps
loads = registry.loads
check_accept = registry.check_accept
accept_content_types = registry.accept_content_types
