"""Storing exceptions, and reading them back without importing or calling what data names."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from celeriac import exceptions
from celeriac.exceptions import RemoteError
from celeriac.utils.exceptions import exception_to_python, prepare_exception


class Outer:
    class NestedError(Exception):
        """Stored under its qualified name, ``Outer.NestedError``."""


class NeedsTwo(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}+{b}")


def stored(exc_type: str, exc_module: str | None, *args: Any) -> dict[str, Any]:
    return {"exc_type": exc_type, "exc_message": list(args), "exc_module": exc_module}


def json_check(value: Any) -> bytes:
    return json.dumps(value).encode()


# -- storing ---------------------------------------------------------------------------------
def test_an_exception_is_stored_with_its_qualified_name_module_and_args() -> None:
    assert prepare_exception(Outer.NestedError("x", 1), json_check) == {
        "exc_type": "Outer.NestedError",
        "exc_message": ["x", 1],
        "exc_module": __name__,
    }


def test_only_the_arguments_the_serializer_refuses_become_reprs() -> None:
    data = prepare_exception(ValueError("ok", {1, 2}, 3), json_check)
    assert data["exc_message"] == ["ok", "{1, 2}", 3]


# -- rebuilding what is safe -----------------------------------------------------------------
def test_a_builtin_exception_is_rebuilt_with_its_args() -> None:
    exc = exception_to_python(stored("KeyError", "builtins", "k"))
    assert type(exc) is KeyError
    assert exc.args == ("k",)


def test_a_nested_class_is_found_by_its_qualified_name() -> None:
    exc = exception_to_python(stored("Outer.NestedError", __name__, "x"))
    assert type(exc) is Outer.NestedError


def test_celeriacs_own_exceptions_are_rebuilt() -> None:
    exc = exception_to_python(stored("TaskRevokedError", "celeriac.exceptions", "why"))
    assert type(exc) is exceptions.TaskRevokedError


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("celery.exceptions", "TaskRevokedError"),
        ("celery.exceptions", "Retry"),
        ("celery.exceptions", "TimeoutError"),
        ("billiard.exceptions", "WorkerLostError"),
        ("billiard.exceptions", "TimeLimitExceeded"),
        ("billiard.exceptions", "SoftTimeLimitExceeded"),
        ("kombu.exceptions", "ContentDisallowed"),
    ],
)
def test_celerys_exceptions_are_rebuilt_as_celeriacs_of_the_same_name(
    module: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, module, raising=False)
    exc = exception_to_python(stored(name, module, "detail"))
    assert type(exc) is getattr(exceptions, name)
    assert module not in sys.modules


def test_a_celery_4_exception_without_module_is_looked_up_in_builtins_only() -> None:
    assert type(exception_to_python(stored("ValueError", None, "x"))) is ValueError
    exc = exception_to_python(stored("TaskRevokedError", None, "x"))
    assert isinstance(exc, RemoteError)


def test_empty_values_and_exception_instances_pass_through() -> None:
    err = ValueError("as pickled")
    assert exception_to_python(None) is None
    assert exception_to_python(err) is err


def test_a_value_that_names_no_exception_type_is_refused() -> None:
    with pytest.raises(ValueError, match="exc_type"):
        exception_to_python({"exc_message": ["x"]})


# -- refusing what is not --------------------------------------------------------------------
SIDE_EFFECT_MODULE = """
from pathlib import Path
Path({marker!r}).write_text("imported")
class Boom(Exception):
    pass
"""


def test_a_module_that_is_not_imported_is_never_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "imported.txt"
    name = "celeriac_test_side_effect_module"
    (tmp_path / f"{name}.py").write_text(SIDE_EFFECT_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)

    exc = exception_to_python(stored("Boom", name, "payload"))

    assert isinstance(exc, RemoteError)
    assert (exc.exc_type, exc.exc_module, exc.exc_args) == ("Boom", name, ("payload",))
    assert name not in sys.modules
    assert not marker.exists()
    # The module really has the side effect, so the assertions above could have failed.
    importlib.import_module(name)
    assert marker.read_text() == "imported"
    monkeypatch.delitem(sys.modules, name)


def test_a_module_that_does_not_exist_reads_as_remote_error() -> None:
    before = set(sys.modules)
    exc = exception_to_python(stored("Err", "no_such_pkg_31c.sub", 1))
    assert isinstance(exc, RemoteError)
    assert str(exc) == "no_such_pkg_31c.sub.Err(1)"
    assert set(sys.modules) == before


def test_a_function_named_as_the_exception_type_is_never_called(tmp_path: Path) -> None:
    target = tmp_path / "pwned"
    exc = exception_to_python(stored("system", "os", f"touch {target}"))
    assert isinstance(exc, RemoteError)
    assert not target.exists()


def test_a_class_that_is_not_an_exception_is_never_instantiated() -> None:
    exc = exception_to_python(stored("Popen", "subprocess", ["echo", "hi"]))
    assert isinstance(exc, RemoteError)


@pytest.mark.parametrize("name", ["SystemExit", "KeyboardInterrupt", "GeneratorExit"])
def test_exceptions_that_would_stop_the_reader_are_not_rebuilt(name: str) -> None:
    assert isinstance(exception_to_python(stored(name, "builtins", 1)), RemoteError)


def test_a_cancelled_error_is_not_rebuilt_to_cancel_the_readers_task() -> None:
    exc = exception_to_python(stored("CancelledError", "asyncio.exceptions"))
    assert isinstance(exc, RemoteError)


def test_a_modules_getattr_hook_is_never_run(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    module = types.ModuleType("celeriac_test_dynamic_module")

    def module_getattr(name: str) -> Any:
        calls.append(name)
        return ValueError

    module.__getattr__ = module_getattr  # type: ignore[method-assign]
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert module.Anything is ValueError  # The hook works when attributes are accessed.
    calls.clear()

    exc = exception_to_python(stored("Anything", module.__name__, "x"))

    assert isinstance(exc, RemoteError)
    assert calls == []


def test_a_lazily_imported_module_is_not_loaded_by_reading_a_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "imported.txt"
    name = "celeriac_test_lazy_module"
    path = tmp_path / f"{name}.py"
    path.write_text(SIDE_EFFECT_MODULE.format(marker=str(marker)))
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)  # Lazy: runs nothing until an attribute is touched.
    assert not marker.exists()

    exc = exception_to_python(stored("Boom", name, "x"))

    assert isinstance(exc, RemoteError)
    assert not marker.exists()
    assert module.Boom.__name__ == "Boom"  # Touching an attribute does load it.
    assert marker.exists()


def test_an_exception_whose_constructor_refuses_its_args_reads_as_remote_error() -> None:
    exc = exception_to_python(stored("NeedsTwo", __name__, "1+2"))
    assert isinstance(exc, RemoteError)
    assert exc.exc_args == ("1+2",)
