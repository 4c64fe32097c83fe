"""Compressing message bodies the way kombu does, named by the ``compression`` header.

A producer compresses the serialized body and puts the compressor's MIME type in the message's
``compression`` header; a consumer reads that header and decompresses before deserializing.
The MIME types are kombu's, so bodies interoperate with Celery:

======== ======================== ==================================================
name     content type             notes
======== ======================== ==================================================
zlib     ``application/x-gzip``   alias ``gzip``; zlib format, *not* gzip, as kombu
bzip2    ``application/x-bz2``    alias ``bzip``
lzma     ``application/x-lzma``   alias ``xz``; xz container
zstd     ``application/zstd``     alias ``zstandard``; needs ``celeriac[zstd]``
brotli   ``application/x-brotli`` needs the ``brotli`` package
======== ======================== ==================================================

zstd and brotli import their package on first use only.
"""

from __future__ import annotations

import bz2
import difflib
import importlib
import lzma
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from celeriac.exceptions import (
    CeleriacError,
    DecodeError,
    EncodeError,
    ImproperlyConfigured,
    MissingDependency,
)


@dataclass(frozen=True, slots=True)
class Compressor:
    """One compression method.

    Attributes:
        name: Short name used in settings (``zlib``).
        content_type: MIME type sent in the ``compression`` header (``application/x-gzip``).
        compress: Compresses a body.
        decompress: Decompresses a body; raises on corrupt input.
    """

    name: str
    content_type: str
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes], bytes]


def _import(name: str, module: str, install: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"{name} compression needs the {module} package: pip install {install}"
        ) from exc


def _load_zstd() -> Compressor:
    zstandard = _import("zstd", "zstandard", "'celeriac[zstd]'")

    def compress(body: bytes) -> bytes:
        out: bytes = zstandard.compress(body)
        return out

    def decompress(body: bytes) -> bytes:
        # Frame by frame: a frame need not state its size (Python 3.14's zstd omits it).
        parts: list[bytes] = []
        while True:
            frame = zstandard.ZstdDecompressor().decompressobj()
            parts.append(frame.decompress(body))
            if not frame.eof:
                raise ValueError("truncated zstd frame")
            body = frame.unused_data
            if not body:
                return b"".join(parts)

    return Compressor("zstd", "application/zstd", compress, decompress)


def _load_brotli() -> Compressor:
    brotli = _import("brotli", "brotli", "'celeriac[brotli]'")
    return Compressor("brotli", "application/x-brotli", brotli.compress, brotli.decompress)


def _ready(compressor: Compressor) -> Callable[[], Compressor]:
    return lambda: compressor


class CompressorRegistry:
    """Compressors by name, alias and MIME type, some of them loaded on first use."""

    def __init__(self) -> None:
        """Create an empty registry (:meth:`with_builtins` makes one with kombu's methods)."""
        self._loaders: dict[str, Callable[[], Compressor]] = {}  # by name, alias and MIME
        self._loaded: dict[str, Compressor] = {}

    @classmethod
    def with_builtins(cls) -> CompressorRegistry:
        """Return a new registry with zlib, bzip2, lzma, zstd and brotli."""
        reg = cls()
        zlib_c = Compressor("zlib", "application/x-gzip", zlib.compress, zlib.decompress)
        reg.register(zlib_c, aliases=("gzip",))
        reg.register(
            Compressor("bzip2", "application/x-bz2", bz2.compress, bz2.decompress), ("bzip",)
        )
        reg.register(
            Compressor("lzma", "application/x-lzma", lzma.compress, lzma.decompress), ("xz",)
        )
        reg.register_lazy("zstd", "application/zstd", _load_zstd, aliases=("zstandard",))
        reg.register_lazy("brotli", "application/x-brotli", _load_brotli)
        return reg

    def register(self, compressor: Compressor, aliases: Iterable[str] = ()) -> None:
        """Add a compressor (and other names for it), replacing any other of the same names."""
        self.register_lazy(compressor.name, compressor.content_type, _ready(compressor), aliases)

    def register_lazy(
        self,
        name: str,
        content_type: str,
        loader: Callable[[], Compressor],
        aliases: Iterable[str] = (),
    ) -> None:
        """Add a compressor that is built, importing its package, only when first used.

        Args:
            name: Its name.
            content_type: Its MIME type, as sent in the ``compression`` header.
            loader: Builds the compressor; raises :class:`MissingDependency` if it cannot.
            aliases: Other names that select it.
        """
        for key in (name, content_type, *aliases):
            self._loaders[key] = loader
            self._loaded.pop(key, None)

    def names(self) -> list[str]:
        """Return every name, alias and MIME type that selects a compressor, sorted."""
        return sorted(self._loaders)

    def get(self, name: str) -> Compressor:
        """Return the compressor with this name, alias or MIME type, loading it if needed.

        Raises:
            ImproperlyConfigured: Unknown name (the message suggests close ones).
            MissingDependency: Its optional package is not installed.
        """
        compressor = self._loaded.get(name)
        if compressor is None:
            loader = self._loaders.get(name)
            if loader is None:
                raise ImproperlyConfigured(_unknown(name, self._loaders))
            compressor = loader()
            for key, key_loader in self._loaders.items():
                if key_loader is loader:
                    self._loaded[key] = compressor
        return compressor

    def compress(self, body: bytes, name: str) -> tuple[bytes, str]:
        """Compress a body; return it with the MIME type for the ``compression`` header.

        Raises:
            EncodeError: The compressor failed.
            ImproperlyConfigured: Unknown compressor.
            MissingDependency: Its optional package is not installed.
        """
        compressor = self.get(name)
        try:
            return compressor.compress(body), compressor.content_type
        except Exception as exc:
            raise EncodeError(f"Cannot compress with {compressor.name}: {exc}") from exc

    def decompress(self, body: bytes, content_type_or_name: str) -> bytes:
        """Decompress a body, given its ``compression`` header (a MIME type or a name).

        Raises:
            DecodeError: Unknown compression, or a corrupt body.
            MissingDependency: Its optional package is not installed.
        """
        try:
            compressor = self.get(content_type_or_name)
            return compressor.decompress(body)
        except (MissingDependency, DecodeError):
            raise
        except CeleriacError as exc:
            raise DecodeError(f"Cannot decompress: {exc}") from exc
        except Exception as exc:
            raise DecodeError(f"Corrupt {content_type_or_name} body: {exc}") from exc


def _unknown(name: str, known: Iterable[str]) -> str:
    choices = sorted(known)
    close = difflib.get_close_matches(name, choices, n=3)
    hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    names = ", ".join(c for c in choices if "/" not in c) or "none"
    return f"Unknown compression {name!r}{hint} (known: {names}, or their MIME types)"


#: The registry the rest of celeriac uses; the functions below are its bound methods.
registry = CompressorRegistry.with_builtins()
register = registry.register
get_compressor = registry.get
compress = registry.compress
decompress = registry.decompress
