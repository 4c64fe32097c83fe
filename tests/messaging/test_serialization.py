"""Tests for celeriac.messaging.serialization: codecs, the wire format, and the accept list."""

from __future__ import annotations

import json
import pickle
import sys
import uuid
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from celeriac.exceptions import (
    ContentDisallowed,
    DecodeError,
    EncodeError,
    ImproperlyConfigured,
    MissingDependency,
)
from celeriac.messaging import serialization
from celeriac.messaging.serialization import (
    DEFAULT_ACCEPT,
    PICKLE_PROTOCOL,
    Serializer,
    SerializerRegistry,
    accept_content_types,
    check_accept,
    dumps,
    loads,
)

CELERY_BODY = [[1, 2], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
PICKLE = "application/x-python-serialize"


def _spy_registry() -> tuple[SerializerRegistry, list[bytes]]:
    """A fresh registry with one serializer whose decoder records every body it is given."""
    calls: list[bytes] = []
    registry = SerializerRegistry()
    registry.register(
        Serializer("spy", "application/x-spy", "binary", lambda v: b"spy", calls.append)
    )
    return registry, calls


# --- JSON ---------------------------------------------------------------------------------


def test_json_is_the_default_and_writes_compact_utf8() -> None:
    content_type, encoding, body = dumps(CELERY_BODY)

    assert (content_type, encoding) == ("application/json", "utf-8")
    assert body == b'[[1,2],{},{"callbacks":null,"errbacks":null,"chain":null,"chord":null}]'
    assert loads(body, content_type, encoding, accept=DEFAULT_ACCEPT) == CELERY_BODY


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (
            datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
            {"__type__": "datetime", "__value__": "2024-05-06T07:08:09.123456+00:00"},
        ),
        (datetime(2024, 5, 6, 7, 8), {"__type__": "datetime", "__value__": "2024-05-06T07:08:00"}),
        (date(2024, 5, 6), {"__type__": "date", "__value__": "2024-05-06"}),
        (time(7, 8, 9), {"__type__": "time", "__value__": "07:08:09"}),
        (Decimal("1.10"), {"__type__": "decimal", "__value__": "1.10"}),
        (
            uuid.UUID("c87109ef-0b1b-4021-812d-ec431856703b"),
            {
                "__type__": "uuid",
                "__value__": {"hex": "c87109ef0b1b4021812dec431856703b", "version": 4},
            },
        ),
        (b"caf\xc3\xa9", {"__type__": "bytes", "__value__": "café"}),
        (b"\xff\x00", {"__type__": "base64", "__value__": "/wA="}),
    ],
)
def test_extended_types_travel_with_kombus_type_markers(value: Any, wire: dict[str, Any]) -> None:
    _, _, body = dumps({"v": value})

    assert json.loads(body) == {"v": wire}
    assert loads(body, "application/json", "utf-8") == {"v": value}


def test_a_body_written_by_kombu_with_spaced_separators_decodes() -> None:
    body = (
        b'{"eta": {"__type__": "datetime", "__value__": "2024-01-02T03:04:05+01:00"}, '
        b'"id": {"__type__": "uuid", "__value__": {"hex": "00000000000000000000000000000000", '
        b'"version": null}}}'
    )

    decoded = loads(body, "application/json", "utf-8")

    assert decoded["eta"] == datetime(2024, 1, 2, 2, 4, 5, tzinfo=UTC)
    assert decoded["id"] == uuid.UUID(int=0)


def test_a_dict_with_a_type_key_and_other_keys_stays_a_dict() -> None:
    data = {"__type__": "datetime", "__value__": "2024-01-01", "extra": 1}
    only_type = {"__type__": "datetime"}

    assert loads(dumps(data)[2], "application/json", "utf-8") == data
    assert loads(dumps(only_type)[2], "application/json", "utf-8") == only_type


def test_an_unknown_type_marker_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="nope"):
        loads(b'{"__type__":"nope","__value__":1}', "application/json", "utf-8")


def test_tuples_become_lists_and_sets_cannot_be_encoded() -> None:
    assert loads(dumps((1, (2, 3)))[2], "application/json", "utf-8") == [1, [2, 3]]

    with pytest.raises(EncodeError, match="set") as caught:
        dumps({1, 2})
    assert isinstance(caught.value.__cause__, TypeError)


def test_an_object_with_a_json_method_is_encoded_by_it() -> None:
    class Point:
        def __json__(self) -> list[int]:
            return [1, 2]

    assert dumps({"p": Point()})[2] == b'{"p":[1,2]}'


def test_a_subclass_of_an_extended_type_is_encoded_as_its_base() -> None:
    class MyDecimal(Decimal):
        pass

    assert json.loads(dumps(MyDecimal("2.5"))[2]) == {"__type__": "decimal", "__value__": "2.5"}


def test_a_custom_json_type_can_be_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serialization, "_JSON_ENCODERS", dict(serialization._JSON_ENCODERS))
    monkeypatch.setattr(serialization, "_JSON_DECODERS", dict(serialization._JSON_DECODERS))
    serialization.register_json_type(
        complex, "complex", lambda c: [c.real, c.imag], lambda v: complex(*v)
    )

    body = dumps(1 + 2j)[2]

    assert json.loads(body) == {"__type__": "complex", "__value__": [1.0, 2.0]}
    assert loads(body, "application/json", "utf-8") == 1 + 2j


_offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
_zones = st.none() | st.just(UTC) | _offsets
_keys = st.text(max_size=8).filter(lambda key: not key.startswith("__"))
_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.datetimes(timezones=_zones)
    | st.dates()
    | st.times(timezones=_zones)
    | st.decimals(allow_nan=False)
    | st.uuids()
)
_json_values = st.recursive(
    _leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=4)
)


@given(_json_values)
def test_json_round_trips_nested_values_with_extended_types(value: Any) -> None:
    content_type, encoding, body = dumps(value)

    assert loads(body, content_type, encoding, accept=DEFAULT_ACCEPT) == value


def test_a_corrupt_json_body_is_a_chained_decode_error() -> None:
    with pytest.raises(DecodeError, match="application/json") as caught:
        loads(b'{"truncated": ', "application/json", "utf-8")
    assert isinstance(caught.value.__cause__, ValueError)

    with pytest.raises(DecodeError):
        loads(b'"\xff"', "application/json", "utf-8")


# --- raw payloads ---------------------------------------------------------------------------


def test_bytes_and_text_without_a_serializer_are_sent_raw() -> None:
    assert dumps(b"\x00\x01", serializer=None) == ("application/data", "binary", b"\x00\x01")
    assert dumps("café", serializer=None) == ("text/plain", "utf-8", "café".encode())
    assert dumps({"a": 1}, serializer=None) == ("application/json", "utf-8", b'{"a":1}')


def test_the_raw_serializer_sends_bytes_or_text_as_application_data() -> None:
    assert dumps(b"\xff", serializer="raw") == ("application/data", "binary", b"\xff")
    assert dumps("é", serializer="raw") == ("application/data", "utf-8", b"\xc3\xa9")
    with pytest.raises(EncodeError, match="bytes or str"):
        dumps(3, serializer="raw")


def test_raw_payloads_are_trusted_and_returned_undecoded() -> None:
    assert loads(b"\xff\x00", "application/data", "binary", accept=DEFAULT_ACCEPT) == b"\xff\x00"
    assert loads("café".encode(), "text/plain", "utf-8", accept=DEFAULT_ACCEPT) == "café"
    assert loads(b"abc", None, "binary", accept=DEFAULT_ACCEPT) == b"abc"
    assert loads(b"abc", None, None, accept=DEFAULT_ACCEPT) == "abc"


def test_a_raw_payload_in_an_unknown_charset_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="no-such-charset"):
        loads(b"abc", "text/plain", "no-such-charset")
    with pytest.raises(DecodeError):
        loads(b"\xff", "text/plain", "utf-8")


# --- the accept list ------------------------------------------------------------------------


def test_a_disallowed_content_type_is_refused_before_decoding() -> None:
    registry, calls = _spy_registry()

    with pytest.raises(ContentDisallowed) as caught:
        registry.loads(b"payload", "application/x-spy", "binary", accept=DEFAULT_ACCEPT)

    assert calls == []
    assert "spy (application/x-spy)" in str(caught.value)
    assert "application/json" in str(caught.value)


def test_an_accepted_content_type_is_decoded() -> None:
    registry, calls = _spy_registry()

    registry.loads(b"payload", "application/x-spy", "binary", accept={"spy"})
    registry.loads(b"again", "application/x-spy", "binary", accept={"application/x-spy"})

    assert calls == [b"payload", b"again"]


def test_pickle_is_refused_by_the_default_accept_list() -> None:
    content_type, encoding, body = dumps({"a": 1}, serializer="pickle")

    with pytest.raises(ContentDisallowed, match=PICKLE):
        loads(body, content_type, encoding, accept=DEFAULT_ACCEPT)
    with pytest.raises(ContentDisallowed):
        check_accept(content_type, DEFAULT_ACCEPT)


def test_check_accept_allows_accepted_and_raw_content() -> None:
    check_accept("application/json", DEFAULT_ACCEPT)
    check_accept("application/json", ["json"])
    check_accept(None, DEFAULT_ACCEPT)
    check_accept("text/plain", frozenset())
    check_accept(PICKLE, None)


def test_accept_content_types_normalises_names_to_mime_types() -> None:
    expected = frozenset({"application/json", PICKLE, "application/x-yaml"})

    assert accept_content_types(["json", "pickle", "application/x-yaml"]) == expected
    assert accept_content_types(None) is None


def test_an_accept_list_with_a_misspelt_name_suggests_the_right_one() -> None:
    with pytest.raises(ImproperlyConfigured, match="did you mean 'json'"):
        accept_content_types(["jsno"])


# --- the other serializers ------------------------------------------------------------------


def test_pickle_round_trips_as_binary_with_kombus_protocol() -> None:
    value = {"when": datetime(2024, 1, 1), "items": {1, 2}}

    content_type, encoding, body = dumps(value, serializer="pickle")

    assert (content_type, encoding) == (PICKLE, "binary")
    assert PICKLE_PROTOCOL == 4
    assert body[:2] == b"\x80\x04"
    assert loads(body, content_type, encoding, accept={"pickle"}) == value


def test_yaml_round_trips_with_the_safe_loader() -> None:
    content_type, encoding, body = dumps({"a": [1, "é"]}, serializer="yaml")

    assert (content_type, encoding) == ("application/x-yaml", "utf-8")
    assert loads(body, content_type, encoding, accept={"yaml"}) == {"a": [1, "é"]}
    with pytest.raises(DecodeError):
        loads(b"!!python/object/apply:os.getcwd []", content_type, encoding)


def test_msgpack_round_trips_bytes_and_text_apart() -> None:
    content_type, encoding, body = dumps({"b": b"\xff", "s": "é"}, serializer="msgpack")

    assert (content_type, encoding) == ("application/x-msgpack", "binary")
    assert loads(body, content_type, encoding, accept={"msgpack"}) == {"b": b"\xff", "s": "é"}


@pytest.mark.parametrize(("name", "extra"), [("yaml", "yaml"), ("msgpack", "msgpack")])
def test_a_missing_optional_package_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, name: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, name, None)
    registry = SerializerRegistry.with_builtins()
    content_type = registry.content_type_of(name)

    with pytest.raises(MissingDependency, match=rf"pip install celeriac\[{extra}\]"):
        registry.dumps({"a": 1}, serializer=name)
    with pytest.raises(MissingDependency):
        registry.loads(b"a: 1", content_type, "utf-8")
    with pytest.raises(ContentDisallowed):
        registry.loads(b"a: 1", content_type, "utf-8", accept=DEFAULT_ACCEPT)


def test_an_optional_serializer_is_loaded_once_on_first_use() -> None:
    loads_counted: list[str] = []
    json_codec = SerializerRegistry.with_builtins().get("json")

    def loader() -> Serializer:
        loads_counted.append("loaded")
        return Serializer(
            "lazy", "application/x-lazy", "utf-8", json_codec.encode, json_codec.decode
        )

    registry = SerializerRegistry()
    registry.register_lazy("lazy", "application/x-lazy", loader)
    assert registry.content_type_of("lazy") == "application/x-lazy"
    assert loads_counted == []

    body = registry.dumps([1], serializer="lazy")[2]
    assert registry.loads(body, "application/x-lazy", "utf-8") == [1]
    assert loads_counted == ["loaded"]


# --- the registry ---------------------------------------------------------------------------


def test_an_unknown_serializer_name_suggests_close_ones() -> None:
    with pytest.raises(ImproperlyConfigured, match="did you mean 'pickle'"):
        dumps({}, serializer="pikle")


def test_an_unknown_content_type_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="application/x-nope"):
        loads(b"{}", "application/x-nope", "utf-8")


def test_a_failing_encoder_is_a_chained_encode_error() -> None:
    def explode(value: Any) -> bytes:
        raise RuntimeError("boom")

    registry = SerializerRegistry()
    registry.register(Serializer("bad", "application/x-bad", "utf-8", explode, bytes))

    with pytest.raises(EncodeError, match="boom") as caught:
        registry.dumps(1, serializer="bad")
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_aliases_select_a_serializer_until_it_is_unregistered() -> None:
    registry, _ = _spy_registry()
    spy = registry.get("spy")
    registry.register(spy, aliases=("snoop",))

    assert registry.get("snoop") is spy
    assert registry.by_content_type("application/x-spy") is spy
    assert registry.dumps(1, serializer="snoop") == ("application/x-spy", "binary", b"spy")

    registry.unregister("snoop")

    for name in ("spy", "snoop"):
        with pytest.raises(ImproperlyConfigured):
            registry.get(name)
    with pytest.raises(DecodeError):
        registry.by_content_type("application/x-spy")
    with pytest.raises(ImproperlyConfigured, match="Unknown serializer 'spy'"):
        registry.unregister("spy")


def test_registering_a_name_again_replaces_the_serializer() -> None:
    registry, _ = _spy_registry()
    replacement = Serializer("spy", "application/x-spy2", "utf-8", lambda v: b"2", bytes)

    registry.register(replacement)

    assert registry.get("spy") is replacement
    assert registry.dumps(0, serializer="spy") == ("application/x-spy2", "utf-8", b"2")
    with pytest.raises(DecodeError):
        registry.by_content_type("application/x-spy")


def test_content_type_of_maps_names_and_passes_mime_types_through() -> None:
    registry = serialization.registry

    assert registry.content_type_of("json") == "application/json"
    assert registry.content_type_of("msgpack") == "application/x-msgpack"
    assert registry.content_type_of("application/x-anything") == "application/x-anything"


def test_a_pickle_body_of_an_older_protocol_still_loads() -> None:
    body = pickle.dumps(["x"], protocol=2)

    assert loads(body, PICKLE, "binary", accept=None) == ["x"]


@pytest.mark.parametrize(
    "value",
    [uuid.UUID("cd613e30-d8f1-6adf-91b7-584a2265b1f5"), uuid.UUID(int=0), uuid.uuid1()],
)
def test_uuids_of_any_version_or_variant_round_trip(value: uuid.UUID) -> None:
    assert loads(dumps(value)[2], "application/json", "utf-8") == value
