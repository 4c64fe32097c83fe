"""Tests for celeriac.messaging.compression: kombu's MIME types, aliases and failures."""

from __future__ import annotations

import bz2
import lzma
import re
import sys
import zlib

import pytest
import zstandard

from celeriac.exceptions import DecodeError, EncodeError, ImproperlyConfigured, MissingDependency
from celeriac.messaging.compression import (
    Compressor,
    CompressorRegistry,
    compress,
    decompress,
    get_compressor,
)

BODY = b'[[1,2],{},{"callbacks":null,"errbacks":null,"chain":null,"chord":null}]' * 20

BUILTINS = [
    ("zlib", "application/x-gzip"),
    ("gzip", "application/x-gzip"),
    ("bzip2", "application/x-bz2"),
    ("bzip", "application/x-bz2"),
    ("lzma", "application/x-lzma"),
    ("xz", "application/x-lzma"),
    ("zstd", "application/zstd"),
    ("zstandard", "application/zstd"),
]


@pytest.mark.parametrize(("name", "content_type"), BUILTINS)
def test_each_builtin_round_trips_and_reports_kombus_content_type(
    name: str, content_type: str
) -> None:
    compressed, header = compress(BODY, name)

    assert header == content_type
    assert len(compressed) < len(BODY)
    assert decompress(compressed, header) == BODY
    assert decompress(compressed, name) == BODY


def test_bodies_are_in_the_formats_celery_readers_expect() -> None:
    assert zlib.decompress(compress(BODY, "gzip")[0]) == BODY
    assert bz2.decompress(compress(BODY, "bzip2")[0]) == BODY
    assert lzma.decompress(compress(BODY, "xz")[0], format=lzma.FORMAT_XZ) == BODY
    assert zstandard.ZstdDecompressor().decompress(compress(BODY, "zstd")[0]) == BODY


def test_content_types_select_compressors_too() -> None:
    assert get_compressor("application/x-gzip").name == "zlib"
    assert get_compressor("application/zstd").name == "zstd"


@pytest.mark.parametrize("name", ["zlib", "bzip2", "lzma", "zstd"])
def test_a_corrupt_body_is_a_chained_decode_error(name: str) -> None:
    content_type = get_compressor(name).content_type

    with pytest.raises(DecodeError, match=content_type) as caught:
        decompress(b"definitely not compressed", content_type)
    assert caught.value.__cause__ is not None


@pytest.mark.parametrize("name", ["zlib", "bzip2", "lzma", "zstd"])
def test_a_truncated_body_is_a_decode_error(name: str) -> None:
    compressed, content_type = compress(BODY, name)

    with pytest.raises(DecodeError):
        decompress(compressed[: len(compressed) // 2], content_type)


def test_zstd_frames_without_a_size_and_several_frames_decompress() -> None:
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(BODY)
    two_frames = zstandard.compress(b"first,") + zstandard.compress(b"second")

    assert decompress(unsized, "application/zstd") == BODY
    assert decompress(two_frames, "application/zstd") == b"first,second"


def test_brotli_round_trips_when_installed() -> None:
    pytest.importorskip("brotli")

    compressed, content_type = compress(BODY, "brotli")

    assert content_type == "application/x-brotli"
    assert decompress(compressed, content_type) == BODY


def test_an_unknown_name_suggests_known_ones() -> None:
    with pytest.raises(ImproperlyConfigured, match="did you mean 'gzip'") as caught:
        get_compressor("gzp")
    assert "bzip2" in str(caught.value)

    with pytest.raises(ImproperlyConfigured):
        compress(BODY, "snappy")


def test_an_unknown_compression_header_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="application/x-snappy"):
        decompress(BODY, "application/x-snappy")


def test_compressing_something_that_is_not_bytes_is_an_encode_error() -> None:
    with pytest.raises(EncodeError, match="zlib"):
        compress("text", "zlib")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "module", "install"),
    [("zstd", "zstandard", "'celeriac[zstd]'"), ("brotli", "brotli", "'celeriac[brotli]'")],
)
def test_a_missing_optional_package_names_what_to_install(
    monkeypatch: pytest.MonkeyPatch, name: str, module: str, install: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    registry = CompressorRegistry.with_builtins()

    with pytest.raises(MissingDependency, match=re.escape(f"pip install {install}")):
        registry.compress(BODY, name)
    with pytest.raises(MissingDependency):
        registry.decompress(BODY, name)


def test_an_optional_compressor_is_loaded_once_on_first_use() -> None:
    loaded: list[str] = []

    def loader() -> Compressor:
        loaded.append("loaded")
        return Compressor("rev", "application/x-rev", lambda b: b[::-1], lambda b: b[::-1])

    registry = CompressorRegistry()
    registry.register_lazy("rev", "application/x-rev", loader, aliases=("reverse",))
    assert loaded == []

    assert registry.compress(b"abc", "reverse") == (b"cba", "application/x-rev")
    assert registry.decompress(b"cba", "application/x-rev") == b"abc"
    assert registry.get("rev").name == "rev"
    assert loaded == ["loaded"]


def test_a_registered_compressor_is_found_by_name_alias_and_content_type() -> None:
    registry = CompressorRegistry()
    upper = Compressor("upper", "application/x-upper", bytes.upper, bytes.lower)
    registry.register(upper, aliases=("up",))

    assert {registry.get(key) for key in ("upper", "up", "application/x-upper")} == {upper}
    assert registry.names() == ["application/x-upper", "up", "upper"]
