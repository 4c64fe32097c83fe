"""Choosing a result backend by URL: Celery's scheme names, lazy imports, helpful errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from celeriac import backends
from celeriac.backends import backend_from_url, register_backend, resolve_backend
from celeriac.backends.memory import MemoryBackend
from celeriac.backends.sqlite import SQLiteBackend
from celeriac.exceptions import ImproperlyConfigured, MissingDependency


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, backends.BackendEntry]:
    """The backend registry, restored after the test (so it may register test schemes)."""
    entries = dict(backends.BACKENDS)
    monkeypatch.setattr(backends, "BACKENDS", entries)
    return entries


@pytest.mark.parametrize(
    ("url", "cls"),
    [
        ("memory://", MemoryBackend),
        ("cache+memory://", MemoryBackend),
        ("sqlite:///results.db", SQLiteBackend),
        ("db+sqlite:///results.db", SQLiteBackend),
    ],
)
def test_celerys_and_celeriacs_schemes_resolve_to_the_backend(url: str, cls: type) -> None:
    assert resolve_backend(url) is cls


def test_an_unknown_scheme_suggests_the_closest_one() -> None:
    with pytest.raises(ImproperlyConfigured, match="Did you mean 'memory'"):
        resolve_backend("memroy://")


def test_an_unknown_scheme_error_masks_the_password() -> None:
    with pytest.raises(ImproperlyConfigured) as info:
        resolve_backend("mongodb://user:s3cret@host/db")
    assert "s3cret" not in str(info.value)
    assert "Known schemes" in str(info.value)


def test_a_backend_whose_library_is_missing_names_the_extra(
    registry: dict[str, backends.BackendEntry],
) -> None:
    register_backend("fancy", "celeriac_no_such_module_9d1:Backend", extra="fancy")
    with pytest.raises(MissingDependency, match=r"pip install 'celeriac\[fancy\]'"):
        resolve_backend("fancy://")


def test_backend_from_url_passes_options_to_the_backend(tmp_path: Path) -> None:
    with backend_from_url(
        f"db+sqlite:///{tmp_path / 'r.db'}", serializer="pickle", expires=5, extended=True
    ) as backend:
        assert isinstance(backend, SQLiteBackend)
        assert (backend.serializer, backend.expires, backend.extended) == ("pickle", 5, True)
        assert backend.path == str(tmp_path / "r.db")


def test_memory_and_cache_memory_urls_with_the_same_name_share_a_store() -> None:
    with (
        backend_from_url("memory://shared-3e1") as one,
        backend_from_url("cache+memory://shared-3e1") as two,
        backend_from_url("memory://other-3e1") as other,
    ):
        one.mark_as_done("t1", "ok")
        assert two.get_task_meta("t1")["result"] == "ok"
        assert other.get_task_meta("t1")["status"] == "PENDING"
        one.forget("t1")


def test_an_unknown_serializer_fails_when_the_backend_is_made() -> None:
    with pytest.raises(ImproperlyConfigured, match="Unknown serializer"):
        backend_from_url("memory://", serializer="jsno")
