"""The tasks the workflow tests compose, registered per app under ``wf.<name>``.

Registered beside the e2e tasks (``e2e_tasks.make_app``) by the in-process stacks and by
the ``proj.py`` a prefork worker loads, so a workflow runs the same tasks in either place.
Tasks that must prove how often something ran append to files in the workdir
(``e2e_tasks.record``), which every process can read.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from e2e_tasks import record

from celeriac import Celery, group


def define_workflow_tasks(app: Celery, workdir: Path) -> SimpleNamespace:  # noqa: C901
    """Register the workflow tasks on ``app``; they record under ``workdir``."""
    task = app.task

    @task(name="wf.add")
    def add(x: int, y: int) -> int:
        return x + y

    @task(name="wf.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @task(name="wf.tsum")
    def tsum(values: list[int]) -> int:
        return sum(values)

    @task(name="wf.listing")
    def listing(*values: Any) -> list[Any]:
        return list(values)

    @task(name="wf.fail")
    def fail(*args: Any) -> None:
        raise ValueError("wf.fail", *args)

    @task(name="wf.body")
    def body(values: list[int]) -> int:
        """A chord body that records every run (to prove it ran exactly once)."""
        record(workdir, "body", len(values))
        return sum(values)

    @task(name="wf.note")
    def note(value: Any) -> Any:
        record(workdir, "note", value)
        return value

    @task(name="wf.on_error")
    def on_error(request: Any, exc: BaseException, traceback: str) -> None:
        record(
            workdir,
            "on_error",
            {"id": request.id, "type": type(exc).__name__, "message": str(exc)},
        )

    @task(name="wf.on_error_id")
    def on_error_id(task_id: str) -> None:
        record(workdir, "on_error_id", task_id)

    @task(bind=True, name="wf.replaced")
    def replaced(self: Any, kind: str, x: int) -> Any:
        if kind == "task":
            return self.replace(add.s(x, 100))
        if kind == "chain":
            return self.replace(add.s(x, 1) | mul.s(10))
        return self.replace(group(add.s(x, i) for i in range(3)))

    @task(bind=True, name="wf.fan_out")
    def fan_out(self: Any, n: int) -> int:
        """Sends a group of ``n`` adds and one more add, then returns ``n``."""
        group(add.s(i, i) for i in range(n)).apply_async()
        add.delay(n, n)
        return n

    @task(bind=True, name="wf.whoami")
    def whoami(self: Any, *_: Any) -> dict[str, Any]:
        request = self.request
        return {
            "id": request.id,
            "root_id": request.root_id,
            "parent_id": request.parent_id,
            "group": request.group,
            "group_index": request.group_index,
        }

    return SimpleNamespace(
        add=add,
        mul=mul,
        tsum=tsum,
        listing=listing,
        fail=fail,
        body=body,
        note=note,
        on_error=on_error,
        on_error_id=on_error_id,
        replaced=replaced,
        fan_out=fan_out,
        whoami=whoami,
    )
