"""asyncio end to end: the async client face, and ``async def`` tasks on the asyncio pool."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from e2e_support import Stack

from celeriac.exceptions import TimeoutError as CeleriacTimeoutError

TIMEOUT = 10


def test_adelay_and_aget_return_the_tasks_value(threads_stack: Stack) -> None:
    add = threads_stack.tasks.add

    async def main() -> int:
        result = await add.adelay(2, 3)
        return await result.aget(timeout=TIMEOUT)

    with threads_stack.worker():
        assert asyncio.run(main()) == 5


def test_aapply_async_sends_with_args_kwargs_and_options(threads_stack: Stack) -> None:
    stamp = threads_stack.tasks.stamp

    async def main() -> float:
        result = await stamp.aapply_async((), {}, countdown=0.3)
        return await result.aget(timeout=TIMEOUT)

    with threads_stack.worker():
        sent = time.time()
        assert asyncio.run(main()) >= sent + 0.3


def test_aget_raises_the_failed_tasks_exception(threads_stack: Stack) -> None:
    fail = threads_stack.tasks.fail

    async def main() -> None:
        result = await fail.adelay("async")
        await result.aget(timeout=TIMEOUT)

    with threads_stack.worker(), pytest.raises(ValueError, match="async"):
        asyncio.run(main())


def test_aget_times_out_without_blocking_the_event_loop(threads_stack: Stack) -> None:
    add = threads_stack.tasks.add
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.02)

    async def main() -> None:
        beat = asyncio.ensure_future(ticker())
        try:
            result = await add.adelay(1, 2)
            await result.aget(timeout=0.3)
        finally:
            beat.cancel()

    with pytest.raises(CeleriacTimeoutError):
        asyncio.run(main())
    assert len(ticks) >= 5


def test_aget_with_on_message_sees_every_state_in_order(threads_stack: Stack) -> None:
    hello = threads_stack.tasks.hello
    seen: list[str] = []

    async def main() -> str:
        result = await hello.adelay(10)
        return await result.aget(timeout=TIMEOUT, on_message=lambda m: seen.append(m["status"]))

    with threads_stack.worker():
        assert asyncio.run(main()) == "hello world: 10"
    assert seen == ["PROGRESS", "PROGRESS", "SUCCESS"]


@pytest.mark.parametrize("transport", ["memory", "sqlite"])
def test_async_tasks_run_concurrently_on_the_asyncio_pool(
    make_stack: Callable[..., Stack], transport: str
) -> None:
    stack = make_stack(transport, "asyncio")
    with stack.worker(concurrency=20):
        started = time.monotonic()
        results = [stack.tasks.nap.delay(0.3) for _ in range(20)]
        for result in results:
            result.get(timeout=TIMEOUT)
        elapsed = time.monotonic() - started
    assert elapsed < 1.5


def test_async_tasks_run_on_the_threads_pool_too(threads_stack: Stack) -> None:
    with threads_stack.worker():
        assert threads_stack.tasks.nap.delay(0).get(timeout=TIMEOUT) > 0
