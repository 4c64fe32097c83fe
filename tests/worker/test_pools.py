"""Execution pools: the contract every pool keeps, then what each pool adds."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from celeriac.exceptions import (
    ImproperlyConfigured,
    SoftTimeLimitExceeded,
    WorkerLostError,
)
from celeriac.worker.job import ExceptionInfo, Job, Outcome
from celeriac.worker.pools import POOLS, AsyncioPool, Pool, PreforkPool, pool_class

T = TypeVar("T")
ALL = ["solo", "threads", "asyncio", "prefork"]
PARALLEL = ["threads", "asyncio", "prefork"]
MIB = 1 << 20

ALLOCATED: list[bytes] = []


class Unpicklable(Exception):
    """An exception carrying a lock, so it cannot cross a process boundary."""

    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


def ok(result: Any) -> Outcome:
    return Outcome(state="SUCCESS", result=result)


def soft_limited() -> Outcome:
    try:
        while True:
            time.sleep(0.01)
    except SoftTimeLimitExceeded:
        return ok("cleaned up")


def run(job: Job) -> Outcome:
    """The fake tracer: what a job does is chosen by its name."""
    name, args = job.name, job.args
    if name == "add":
        return ok(sum(args))
    if name == "echo":
        return ok(args[0])
    if name == "sleep":
        time.sleep(args[0])
        return ok(args[0])
    if name == "boom":
        error = ExceptionInfo("ValueError", "builtins", ("boom",), "")
        return Outcome(state="FAILURE", error=error)
    if name == "pid":
        return ok(os.getpid())
    if name == "die":
        os._exit(1)
    if name == "alloc":
        ALLOCATED.append(b"x" * (args[0] * MIB))  # touched, so it is resident
        return ok(len(ALLOCATED))
    if name == "soft":
        return soft_limited()
    if name == "usr1":  # a signal handled in Python, as task code may install
        signal.signal(signal.SIGUSR1, lambda signum, frame: None)
        signal.raise_signal(signal.SIGUSR1)
        return ok("handled")
    if name == "lock":
        return ok(threading.Lock())
    if name == "bad-exception":
        exc = Unpicklable()
        info = ExceptionInfo("Unpicklable", __name__, exc.args, "tb", exception=exc)
        return Outcome(state="FAILURE", error=info)
    raise RuntimeError(f"the runner has a bug: {name}")


async def arun(job: Job) -> Outcome:
    """The fake async tracer: coroutine jobs on the loop, the rest in a thread."""
    if job.name == "sleep":
        await asyncio.sleep(job.args[0])
        return ok(job.args[0])
    if job.name == "soft":
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return ok("cleaned up")
        return ok("not limited")
    return await asyncio.to_thread(run, job)


JOB_NUMBERS = itertools.count(1)


def job(name: str, *args: Any, **options: Any) -> Job:
    return Job(id=f"{name}-{next(JOB_NUMBERS)}", name=name, args=args, **options)


def drive(
    name: str, scenario: Callable[[Any], Awaitable[T]], concurrency: int = 2, **options: Any
) -> T:
    """Start a pool, play ``scenario`` on it, then stop it warm (cold if the scenario failed)."""

    async def main() -> T:
        pool = pool_class(name)(run, concurrency, async_runner=arun, **options)
        await pool.start()
        try:
            result = await scenario(pool)
        except BaseException:
            await pool.terminate()
            raise
        await pool.join()
        return result

    return asyncio.run(main())


def results(outcomes: list[Outcome]) -> list[Any]:
    return [outcome.result for outcome in outcomes]


def assert_reaped(pids: set[int]) -> None:
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


# -- the contract, over every pool ----------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_every_pool_returns_the_outcome_of_each_job(name: str) -> None:
    async def scenario(pool: Pool) -> tuple[Outcome, Outcome]:
        return await asyncio.gather(pool.submit(job("add", 1, 2)), pool.submit(job("boom")))

    added, failed = drive(name, scenario)
    assert added == ok(3)
    assert failed.state == "FAILURE"
    assert failed.error is not None and failed.error.args == ("boom",)


@pytest.mark.parametrize("name", PARALLEL)
def test_a_pool_runs_at_most_concurrency_jobs_at_once(name: str) -> None:
    async def scenario(pool: Pool) -> float:
        started = time.monotonic()
        await asyncio.gather(*(pool.submit(job("sleep", 0.3)) for _ in range(4)))
        return time.monotonic() - started

    elapsed = drive(name, scenario, concurrency=2)
    assert 0.55 < elapsed < 1.1


def test_the_solo_pool_runs_one_job_at_a_time_whatever_the_concurrency() -> None:
    async def scenario(pool: Pool) -> float:
        assert pool.concurrency == 1
        started = time.monotonic()
        await asyncio.gather(*(pool.submit(job("sleep", 0.1)) for _ in range(3)))
        return time.monotonic() - started

    assert drive("solo", scenario, concurrency=4) >= 0.3


@pytest.mark.parametrize("name", ALL)
def test_free_slots_and_active_count_running_jobs_and_queued_ones_take_slots(name: str) -> None:
    async def scenario(pool: Pool) -> None:
        slots = pool.concurrency
        assert (pool.free_slots, pool.active) == (slots, 0)
        futures = [pool.submit(job("sleep", 0.2)) for _ in range(slots + 1)]
        assert (pool.free_slots, pool.active, pool.queued) == (0, slots, 1)
        await asyncio.gather(*futures)
        assert (pool.free_slots, pool.active, pool.queued) == (slots, 0, 0)

    drive(name, scenario, concurrency=2)


@pytest.mark.parametrize("name", ALL)
def test_join_waits_for_running_and_queued_jobs(name: str) -> None:
    async def scenario(pool: Pool) -> list[asyncio.Future[Outcome]]:
        return [pool.submit(job("sleep", 0.1)) for _ in range(3)]

    futures = drive(name, scenario, concurrency=1)
    assert [future.result() for future in futures] == [ok(0.1)] * 3


@pytest.mark.parametrize("name", ALL)
def test_a_stopping_pool_refuses_new_jobs(name: str) -> None:
    async def main() -> None:
        pool = pool_class(name)(run, 1, async_runner=arun)
        await pool.start()
        await pool.join()
        with pytest.raises(RuntimeError, match="stopping"):
            pool.submit(job("add", 1))

    asyncio.run(main())


@pytest.mark.parametrize("name", ALL)
def test_a_runner_that_raises_gives_a_failure_and_the_pool_carries_on(name: str) -> None:
    async def scenario(pool: Pool) -> list[Outcome]:
        return [await pool.submit(job("no-such-job")), await pool.submit(job("add", 2, 2))]

    failed, added = drive(name, scenario)
    assert failed.state == "FAILURE" and failed.error is not None
    assert (failed.error.type, failed.error.module) == ("RuntimeError", "builtins")
    assert "the runner has a bug" in failed.error.traceback
    assert added == ok(4)


@pytest.mark.parametrize("name", ALL)
def test_terminate_resolves_every_unfinished_job_as_worker_lost(name: str) -> None:
    async def main() -> list[Outcome]:
        pool = pool_class(name)(run, 1, async_runner=arun)
        await pool.start()
        futures = [pool.submit(job("sleep", 0.3)) for _ in range(2)]
        if name != "solo":  # a solo job blocks the loop: a stop can only come between jobs
            await asyncio.sleep(0.05)
        await pool.terminate()
        return [future.result() for future in futures]

    for outcome in asyncio.run(main()):
        assert outcome.worker_lost and outcome.state == "FAILURE"
        assert outcome.error is not None and outcome.error.type == "WorkerLostError"
        assert outcome.error.module == "celeriac.exceptions"


def test_a_queued_job_whose_future_was_cancelled_never_runs() -> None:
    async def scenario(pool: Pool) -> list[Any]:
        first = pool.submit(job("sleep", 0.1))
        dropped = pool.submit(job("die"))
        dropped.cancel()
        return [(await first).result, pool.active]

    assert drive("prefork", scenario, concurrency=1) == [0.1, 0]


def test_unknown_pool_names_suggest_the_closest_one() -> None:
    assert pool_class("prefork") is PreforkPool
    assert set(POOLS) == {"solo", "threads", "asyncio", "prefork"}
    with pytest.raises(ImproperlyConfigured, match="Did you mean 'threads'"):
        pool_class("thread")


def test_concurrency_below_one_is_refused() -> None:
    with pytest.raises(ImproperlyConfigured, match="at least 1"):
        pool_class("threads")(run, 0)


# -- solo and threads: time limits ----------------------------------------------------------


def test_the_solo_pool_raises_the_soft_limit_inside_the_job() -> None:
    async def scenario(pool: Pool) -> Outcome:
        return await pool.submit(job("soft", soft_time_limit=0.2))

    assert drive("solo", scenario) == ok("cleaned up")


def test_the_soft_limit_gives_back_a_timer_armed_before_it() -> None:
    previous = signal.signal(signal.SIGALRM, signal.SIG_IGN)
    signal.setitimer(signal.ITIMER_REAL, 30)
    try:
        drive("solo", lambda pool: pool.submit(job("add", 1, soft_time_limit=5)))
        assert 25 < signal.getitimer(signal.ITIMER_REAL)[0] <= 30
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("name", ["solo", "threads"])
def test_pools_that_cannot_enforce_a_time_limit_warn_once(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(pool: Pool) -> list[Outcome]:
        return [await pool.submit(job("add", 1, time_limit=5)) for _ in range(2)]

    with caplog.at_level(logging.WARNING, logger="celeriac.worker.pools"):
        assert results(drive(name, scenario)) == [1, 1]
    assert len([r for r in caplog.records if "time limit" in r.getMessage()]) == 1


# -- asyncio ----------------------------------------------------------------------------------


def test_the_asyncio_pool_runs_coroutine_jobs_side_by_side_on_the_loop() -> None:
    async def scenario(pool: Pool) -> float:
        started = time.monotonic()
        await asyncio.gather(*(pool.submit(job("sleep", 0.2)) for _ in range(50)))
        return time.monotonic() - started

    assert drive("asyncio", scenario, concurrency=50) < 0.7


def test_the_asyncio_pool_needs_an_async_runner() -> None:
    with pytest.raises(ImproperlyConfigured, match="async_runner"):
        AsyncioPool(run, 4)


def test_the_asyncio_pool_cancels_a_job_past_its_hard_limit() -> None:
    async def scenario(pool: Pool) -> tuple[Outcome, float, Outcome]:
        started = time.monotonic()
        limited = await pool.submit(job("sleep", 5, time_limit=0.2))
        return limited, time.monotonic() - started, await pool.submit(job("add", 1, 1))

    limited, elapsed, after = drive("asyncio", scenario)
    assert elapsed < 1.0
    assert limited.state == "FAILURE" and limited.error is not None
    assert limited.error.type == "TimeLimitExceeded"
    assert limited.error.module == "celeriac.exceptions"
    assert after == ok(2)


def test_the_asyncio_soft_limit_lets_the_job_clean_up_or_fails_it() -> None:
    async def scenario(pool: Pool) -> list[Outcome]:
        return list(
            await asyncio.gather(
                pool.submit(job("soft", soft_time_limit=0.1)),
                pool.submit(job("sleep", 5, soft_time_limit=0.1)),
            )
        )

    cleaned, failed = drive("asyncio", scenario)
    assert cleaned == ok("cleaned up")
    assert failed.error is not None and failed.error.type == "SoftTimeLimitExceeded"


# -- prefork ---------------------------------------------------------------------------------


def test_prefork_children_are_other_processes_and_are_reused() -> None:
    async def scenario(pool: PreforkPool) -> tuple[list[int], set[int]]:
        before = pool.child_pids
        pids = {(await pool.submit(job("pid"))).result for _ in range(6)}
        assert pool.child_pids == before
        return before, pids

    children, pids = drive("prefork", scenario, concurrency=2)
    assert len(children) == 2 and os.getpid() not in children
    assert pids <= set(children)
    assert_reaped(set(children))


@pytest.mark.parametrize(("how", "words"), [("kill", "signal 9 (SIGKILL)"), ("die", "exitcode 1")])
def test_a_child_dying_mid_job_gives_worker_lost_and_is_replaced(how: str, words: str) -> None:
    async def scenario(pool: PreforkPool) -> tuple[Outcome, int, int]:
        (victim,) = pool.child_pids
        if how == "kill":
            future = pool.submit(job("sleep", 5))
            await asyncio.sleep(0.2)
            os.kill(victim, signal.SIGKILL)
            lost = await future
        else:
            lost = await pool.submit(job("die"))
        return lost, victim, (await pool.submit(job("pid"))).result

    lost, victim, replacement = drive("prefork", scenario, concurrency=1)
    assert lost.worker_lost and lost.state == "FAILURE" and lost.error is not None
    assert (lost.error.type, lost.error.module) == ("WorkerLostError", "celeriac.exceptions")
    (message,) = lost.error.args
    assert message.startswith(f"Worker exited prematurely: {words} Job: ")
    assert replacement != victim
    assert_reaped({victim, replacement})


def test_a_prefork_job_past_its_hard_limit_is_killed_and_its_child_replaced() -> None:
    async def scenario(pool: PreforkPool) -> tuple[Outcome, float, list[int], list[int]]:
        before = pool.child_pids
        started = time.monotonic()
        limited = await pool.submit(job("sleep", 5, time_limit=0.3))
        elapsed = time.monotonic() - started
        await pool.submit(job("add", 1))
        return limited, elapsed, before, pool.child_pids

    limited, elapsed, before, after = drive("prefork", scenario, concurrency=1)
    assert 0.3 <= elapsed < 2.0
    assert limited.state == "FAILURE" and not limited.worker_lost and limited.error is not None
    assert limited.error.type == "TimeLimitExceeded"
    assert limited.error.module == "celeriac.exceptions"
    assert limited.error.args == (0.3,)
    assert before != after


def test_a_prefork_soft_limit_is_raised_inside_the_job_which_may_clean_up() -> None:
    async def scenario(pool: PreforkPool) -> tuple[Outcome, list[int], list[int]]:
        before = pool.child_pids
        outcome = await pool.submit(job("soft", soft_time_limit=0.2))
        return outcome, before, pool.child_pids

    outcome, before, after = drive("prefork", scenario, concurrency=1)
    assert outcome == ok("cleaned up")
    assert before == after


def test_a_child_retires_after_max_tasks_per_child() -> None:
    async def scenario(pool: PreforkPool) -> list[int]:
        return [(await pool.submit(job("pid"))).result for _ in range(4)]

    pids = drive("prefork", scenario, concurrency=1, max_tasks_per_child=2)
    assert pids[0] == pids[1] != pids[2] == pids[3]
    assert_reaped(set(pids))


def test_a_child_retires_when_it_grows_past_max_memory_per_child() -> None:
    with open("/proc/self/statm", encoding="ascii") as statm:
        resident_kib = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

    async def scenario(pool: PreforkPool) -> list[int]:
        small = [(await pool.submit(job("pid"))).result for _ in range(2)]
        await pool.submit(job("alloc", 96))
        return [*small, (await pool.submit(job("pid"))).result]

    limit = resident_kib + 48 * 1024
    first, second, after = drive("prefork", scenario, concurrency=1, max_memory_per_child=limit)
    assert first == second != after


def record_pid(path: Path) -> None:
    with path.open("a", encoding="ascii") as file:
        file.write(f"{os.getpid()}\n")


def test_on_process_start_runs_once_in_each_child(tmp_path: Path) -> None:
    path = tmp_path / "started"

    async def scenario(pool: PreforkPool) -> list[int]:
        await asyncio.gather(*(pool.submit(job("add", 1)) for _ in range(4)))
        return pool.child_pids

    started = functools.partial(record_pid, path)
    children = drive("prefork", scenario, concurrency=2, on_process_start=started)
    assert sorted(map(int, path.read_text().split())) == sorted(children)


def fail_to_start() -> None:
    raise RuntimeError("worker_process_init handler is broken")


def test_a_child_that_cannot_start_fails_the_pool_start_and_leaves_no_zombie() -> None:
    pool = PreforkPool(run, 2, on_process_start=fail_to_start)
    with pytest.raises(WorkerLostError, match="exited before it was ready: exitcode 1"):
        asyncio.run(pool.start())
    assert pool.child_pids == []


def test_prefork_children_ignore_ctrl_c_which_is_for_the_parent() -> None:
    async def scenario(pool: PreforkPool) -> tuple[int, int]:
        (child,) = pool.child_pids
        os.kill(child, signal.SIGINT)
        await asyncio.sleep(0.1)
        return child, (await pool.submit(job("pid"))).result

    child, ran_in = drive("prefork", scenario, concurrency=1)
    assert child == ran_in


def test_large_jobs_and_outcomes_cross_the_pipe_whole() -> None:
    payload = "x" * (8 * MIB)

    async def scenario(pool: PreforkPool) -> Outcome:
        return await pool.submit(job("echo", payload))

    assert drive("prefork", scenario).result == payload


def test_an_outcome_that_does_not_pickle_becomes_a_failure_saying_so() -> None:
    async def scenario(pool: PreforkPool) -> list[Outcome]:
        return [await pool.submit(job(name)) for name in ("lock", "bad-exception", "pid")]

    lock, bad_exception, pid = drive("prefork", scenario, concurrency=1)
    assert lock.state == "FAILURE" and lock.error is not None
    assert "could not be pickled" in lock.error.args[0]
    assert bad_exception.error == ExceptionInfo("Unpicklable", __name__, ("holds a lock",), "tb")
    assert isinstance(pid.result, int)


def test_a_job_that_does_not_pickle_fails_without_costing_a_child() -> None:
    async def scenario(pool: PreforkPool) -> tuple[Outcome, Outcome]:
        unsent = await pool.submit(job("echo", threading.Lock()))
        return unsent, await pool.submit(job("add", 5))

    unsent, added = drive("prefork", scenario, concurrency=1)
    assert unsent.state == "FAILURE" and unsent.error is not None
    assert unsent.error.type == "TypeError"
    assert added == ok(5)


def test_a_warm_stop_reaps_every_child() -> None:
    seen: set[int] = set()

    async def scenario(pool: PreforkPool) -> None:
        seen.update(pool.child_pids)
        await asyncio.gather(*(pool.submit(job("add", 1)) for _ in range(6)))
        seen.update(pool.child_pids)

    drive("prefork", scenario, concurrency=3, max_tasks_per_child=1)
    assert len(seen) >= 6
    assert_reaped(seen)


def test_signals_handled_in_a_child_do_not_wake_the_parents_loop() -> None:
    woken: list[int] = []

    async def main() -> Outcome:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, woken.append, 1)
        pool = PreforkPool(run, 1)
        try:
            await pool.start()
            outcome = await pool.submit(job("usr1"))
            await asyncio.sleep(0.1)
            await pool.join()
        finally:
            loop.remove_signal_handler(signal.SIGUSR1)
        return outcome

    assert asyncio.run(main()) == ok("handled")
    assert woken == []


def test_children_are_watched_through_a_pipe_where_pidfds_are_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from celeriac.worker.pools import prefork

    monkeypatch.setattr(prefork, "pidfd_supported", lambda: False)

    async def scenario(pool: PreforkPool) -> tuple[Outcome, Outcome, set[int]]:
        seen = set(pool.child_pids)
        lost = await pool.submit(job("die"))
        seen.update(pool.child_pids)
        return lost, await pool.submit(job("add", 3)), seen

    lost, added, seen = drive("prefork", scenario, concurrency=1)
    assert lost.worker_lost and added == ok(3)
    assert len(seen) == 2
    assert_reaped(seen)
