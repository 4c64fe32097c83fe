"""Running tasks here (call, apply, always-eager) and the app's configuration."""

from __future__ import annotations

import types
import warnings
from typing import Any

import pytest

from celeriac import Celery, states
from celeriac.app.settings import UnknownSettingWarning
from celeriac.exceptions import ImproperlyConfigured, MaxRetriesExceededError, Retry


def test_calling_a_task_runs_the_function_here(app: Celery) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add(2, 3) == 5
    assert app.connection().transport.queue_length("celery") == 0


def test_apply_runs_through_the_tracer_and_returns_an_eager_result(app: Celery) -> None:
    seen: list[Any] = []

    @app.task(bind=True)
    def whoami(self: Any, x: int) -> int:
        seen.append((self.request.id, self.request.is_eager, self.request.args))
        return x * 2

    result = whoami.apply((21,), task_id="fixed-id")
    assert result.get() == 42 and result.state == states.SUCCESS and result.successful()
    assert seen == [("fixed-id", True, (21,))]


def test_an_eager_failure_is_returned_or_raised_as_asked(app: Celery) -> None:
    @app.task
    def fail() -> None:
        raise ValueError("nope")

    result = fail.apply()
    assert result.state == states.FAILURE and result.failed()
    assert isinstance(result.result, ValueError)
    with pytest.raises(ValueError, match="nope"):
        result.get()
    assert isinstance(result.get(propagate=False), ValueError)
    with pytest.raises(ValueError, match="nope"):
        fail.apply(throw=True)


def test_always_eager_runs_delay_in_process(app: Celery) -> None:
    app.conf.task_always_eager = True

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.delay(4, 4).get() == 8
    assert app.connection().transport.queue_length("celery") == 0


def test_an_eager_retry_runs_again_until_it_succeeds(app: Celery) -> None:
    attempts: list[int] = []

    @app.task(bind=True, max_retries=3)
    def flaky(self: Any) -> str:
        attempts.append(self.request.retries)
        if len(attempts) < 3:
            raise self.retry(exc=KeyError("not yet"), countdown=0)
        return "done"

    assert flaky.apply().get() == "done"
    assert attempts == [0, 1, 2]


def test_retrying_past_max_retries_raises_the_cause_or_max_retries_exceeded(app: Celery) -> None:
    @app.task(bind=True, max_retries=1)
    def always(self: Any, with_exc: bool) -> None:
        if with_exc:
            raise self.retry(exc=KeyError("cause"), countdown=0)
        raise self.retry(countdown=0)

    with pytest.raises(KeyError, match="cause"):
        always.apply((True,)).get()
    with pytest.raises(MaxRetriesExceededError):
        always.apply((False,)).get()


def test_autoretry_for_retries_listed_exceptions_only(app: Celery) -> None:
    calls: list[int] = []

    @app.task(bind=True, autoretry_for=(KeyError,), retry_kwargs={"max_retries": 2})
    def sometimes(self: Any) -> str:
        calls.append(self.request.retries)
        if len(calls) < 2:
            raise KeyError("transient")
        return "ok"

    assert sometimes.apply().get() == "ok"
    assert calls == [0, 1]


def test_retry_outside_a_worker_raises_the_given_exception(app: Celery) -> None:
    @app.task(bind=True)
    def direct(self: Any) -> None:
        raise self.retry(exc=OSError("disk"))

    with pytest.raises(OSError, match="disk"):
        direct()
    assert issubclass(Retry, Exception)


def test_an_unknown_setting_warns_with_the_closest_name() -> None:
    app = Celery("t", broker="memory://settings", backend="memory://settings")
    with pytest.warns(UnknownSettingWarning, match="did you mean 'task_serializer'"):
        app.conf.task_serialiser = "json"
    with pytest.warns(UnknownSettingWarning, match="did you mean 'broker_url'"):
        app.conf.update(broker_ur="memory://")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        app.conf.task_serializer = "json"  # a known name stays silent


def test_config_from_object_reads_modules_classes_mappings_and_namespaces() -> None:
    app = Celery("t", broker="memory://cfg", backend="memory://cfg")
    module = types.ModuleType("fake_config")
    module.task_default_queue = "from-module"  # type: ignore[attr-defined]
    module.types = types  # type: ignore[attr-defined]  # an import: not a setting
    app.config_from_object(module)
    assert app.conf.task_default_queue == "from-module"

    class Config:
        worker_prefetch_multiplier = 1

    app.config_from_object(Config)
    assert app.conf.worker_prefetch_multiplier == 1
    app.config_from_object({"CELERY_TASK_ACKS_LATE": True, "OTHER": 1}, namespace="CELERY")
    assert app.conf.task_acks_late is True
    app.config_from_object({"result_expires": 10})
    assert app.conf["result_expires"] == 10


def test_config_from_envvar_names_the_missing_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    (tmp_path / "sample_config.py").write_text("task_default_priority = 5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    app = Celery("t", broker="memory://env", backend="memory://env")
    monkeypatch.delenv("CELERIAC_TEST_CONFIG", raising=False)
    with pytest.raises(ImproperlyConfigured, match="CELERIAC_TEST_CONFIG"):
        app.config_from_envvar("CELERIAC_TEST_CONFIG")
    assert app.config_from_envvar("CELERIAC_TEST_CONFIG", silent=True) is False
    monkeypatch.setenv("CELERIAC_TEST_CONFIG", "sample_config")
    assert app.config_from_envvar("CELERIAC_TEST_CONFIG")
    assert app.conf.task_default_priority == 5


def test_the_default_broker_and_backend_share_one_file_in_the_working_directory(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    app = Celery("t")
    expected = f"sqlite:///{tmp_path}/celeriac.db"
    assert app.broker_url == expected
    assert app.result_backend_url == expected
