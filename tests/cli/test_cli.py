"""The ``celeriac`` command: finding the app, sending a task, reading a result, bad input."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from celeriac import Celery
from celeriac.app import state
from celeriac.cli import main
from celeriac.cli.loading import find_app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "proj"
CELERIAC = Path(sys.executable).with_name("celeriac")

AppModule = Callable[..., str]


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Each test runs in its own directory; sys.path and the app registry are restored after.

    The command puts the working directory on ``sys.path`` (as Celery's does), so the path is
    saved here, and every app the test makes is closed (its SQLite connections released).
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(state, "_all_apps", weakref.WeakSet(state.all_apps()))
    monkeypatch.setattr(state, "_current_app", state._current_app)
    before = set(map(id, state.all_apps()))
    yield
    for app in state.all_apps():
        if id(app) not in before:
            app.close()


@pytest.fixture
def app_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AppModule:
    """Writes an app module into the working directory; returns its (unique) module name."""

    def write(source: str = "app = Celery('cliapp')\n") -> str:
        name = f"cliapp_{uuid.uuid4().hex[:8]}"
        code = "from celeriac import Celery\n\n" + textwrap.dedent(source)
        (tmp_path / f"{name}.py").write_text(code)
        monkeypatch.delitem(sys.modules, name, raising=False)  # removed again after the test
        return name

    return write


def celeriac(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def loaded_app(module_name: str, attribute: str = "app") -> Celery:
    app = getattr(sys.modules[module_name], attribute)
    assert isinstance(app, Celery)
    return app


# -- help and usage errors ----------------------------------------------------------------
def test_help_lists_the_commands() -> None:
    result = celeriac("--help")
    assert result.exit_code == 0
    for command in ("worker", "call", "result"):
        assert command in result.output


def test_a_command_without_an_app_is_a_usage_error_that_says_how_to_give_one() -> None:
    result = celeriac("call", "proj.tasks.add")
    assert result.exit_code == 2
    assert "give the app with -A/--app" in result.output


def test_an_app_module_that_does_not_exist_is_named_in_a_clear_error() -> None:
    result = celeriac("-A", "celeriac_no_such_module", "result", "some-id")
    assert result.exit_code == 2
    assert "cannot load app 'celeriac_no_such_module'" in result.output
    assert "No module named 'celeriac_no_such_module'" in result.output
    assert "Traceback" not in result.output


def test_a_module_without_an_app_is_a_clear_error(app_module: AppModule) -> None:
    name = app_module("settings = {}\n")
    result = celeriac("-A", name, "result", "some-id")
    assert result.exit_code == 2
    assert f"no Celery app found in {name}" in result.output


def test_a_module_attr_that_is_not_an_app_is_a_clear_error(app_module: AppModule) -> None:
    name = app_module("answer = 42\n")
    result = celeriac("-A", f"{name}:answer", "result", "some-id")
    assert result.exit_code == 2
    assert "is a int, not a Celery app" in result.output


def test_an_unknown_log_level_for_the_worker_is_a_usage_error(app_module: AppModule) -> None:
    result = celeriac("-A", app_module(), "worker", "-l", "LOUD")
    assert result.exit_code == 2
    assert "unknown log level 'LOUD'" in result.output


# -- call ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "value", "complaint"),
    [
        ("--args", "[1, 2", "--args must be JSON"),
        ("--args", '{"x": 1}', "--args must be a JSON list"),
        ("--kwargs", "[1, 2]", "--kwargs must be a JSON dict"),
    ],
)
def test_call_refuses_arguments_that_are_not_the_right_json(
    app_module: AppModule, option: str, value: str, complaint: str
) -> None:
    name = app_module()
    result = celeriac("-A", name, "call", "cliapp.add", option, value)
    assert result.exit_code == 2
    assert complaint in result.output
    assert loaded_app(name).connection().transport.queue_length("celery") == 0


def test_call_prints_the_task_id_and_the_message_waits_in_the_default_queue(
    app_module: AppModule, tmp_path: Path
) -> None:
    name = app_module()
    result = celeriac("-A", name, "call", "cliapp.add", "--args", "[2, 2]", "-k", '{"z": 1}')
    assert result.exit_code == 0, result.output
    task_id = result.output.strip()
    assert uuid.UUID(task_id)

    app = loaded_app(name)
    assert app.broker_url == f"sqlite:///{tmp_path.resolve() / 'celeriac.db'}"
    with app.connection() as conn:
        assert conn.transport.queue_length("celery") == 1
        [message] = conn.Consumer(app.router.default_queue).consume().fetch()
        assert message.headers["id"] == task_id
        assert message.headers["task"] == "cliapp.add"
        assert message.decode()[:2] == [[2, 2], {"z": 1}]
        message.requeue()


def test_call_passes_the_sending_options_on(app_module: AppModule) -> None:
    name = app_module()
    result = celeriac("-A", name, "call", "cliapp.add", "--queue", "urgent", "--countdown", "60")
    assert result.exit_code == 0, result.output
    with loaded_app(name).connection() as conn:
        assert conn.transport.queue_length("urgent") == 1
        assert conn.transport.queue_length("celery") == 0


# -- result -------------------------------------------------------------------------------
def test_the_result_of_an_unknown_task_id_is_pending(app_module: AppModule) -> None:
    result = celeriac("-A", app_module(), "result", str(uuid.uuid4()))
    assert result.exit_code == 0, result.output
    assert result.output == "PENDING: None\n"


def test_result_shows_a_stored_state_and_value(app_module: AppModule) -> None:
    name = app_module()
    task_id = str(uuid.uuid4())
    celeriac("-A", name, "result", task_id)
    loaded_app(name).backend.mark_as_done(task_id, 4)
    result = celeriac("-A", name, "result", task_id)
    assert result.output == "SUCCESS: 4\n"


# -- finding the app ----------------------------------------------------------------------
def test_the_module_colon_attribute_form_names_the_app(app_module: AppModule) -> None:
    name = app_module("first = Celery('one')\nsecond = Celery('two')\n")
    result = celeriac("-A", f"{name}:second", "result", str(uuid.uuid4()))
    assert result.exit_code == 0, result.output
    assert result.output == "PENDING: None\n"
    assert find_app(f"{name}:second") is loaded_app(name, "second")


def test_a_module_with_one_app_under_another_name_is_found(
    app_module: AppModule, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    name = app_module("my_app = Celery('mine')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert find_app(name) is loaded_app(name, "my_app")


def test_find_app_finds_the_app_of_a_project_package_in_its_celery_module(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    for module in ("proj", "proj.celery", "proj.tasks"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    app = find_app("proj")
    assert app is loaded_app("proj.celery")
    app.import_task_modules()
    assert {"proj.tasks.add", "proj.tasks.hello", "proj.tasks.fetch_title"} <= set(app.tasks)


# -- the installed command ----------------------------------------------------------------
def test_the_installed_command_sends_from_the_working_directory_and_reads_results(
    app_module: AppModule, tmp_path: Path
) -> None:
    name = app_module()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CELERIAC), "-A", name, *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    sent = run("call", "cliapp.add", "--args", "[1, 2]")
    assert sent.returncode == 0, sent.stderr
    task_id = sent.stdout.strip()
    assert run("result", task_id).stdout == "PENDING: None\n"
    assert (tmp_path / "celeriac.db").exists()

    missing = subprocess.run(
        [str(CELERIAC), "worker"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert missing.returncode == 2
    assert "give the app with -A/--app" in missing.stderr
