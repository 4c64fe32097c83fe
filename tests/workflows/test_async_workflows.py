"""The asyncio face of workflows: ``await workflow.aapply_async()``, ``await result.aget()``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from e2e_support import Stack
from workflow_support import TIMEOUT

from celeriac import chain, chord, group
from celeriac.exceptions import ChordError


def test_workflows_are_sent_and_awaited_from_asyncio(threads_stack: Stack) -> None:
    wf = threads_stack.wf

    async def main() -> list[Any]:
        sent_chain = await (wf.add.s(1, 1) | wf.mul.s(5)).aapply_async()
        sent_group = await group(wf.add.s(i, i) for i in range(3)).aapply_async()
        sent_chord = await chord([wf.add.s(1, 1), wf.add.s(2, 2)], wf.tsum.s()).aapply_async()
        parts = await wf.add.chunks([(1, 1), (2, 2)], 1).aapply_async()
        return await asyncio.gather(
            sent_chain.aget(timeout=TIMEOUT),
            sent_group.aget(timeout=TIMEOUT),
            sent_chord.aget(timeout=TIMEOUT),
            parts.aget(timeout=TIMEOUT),
        )

    with threads_stack.worker():
        assert asyncio.run(main()) == [10, [0, 2, 4], 6, [[2], [4]]]


def test_a_failed_chord_raises_when_awaited(threads_stack: Stack) -> None:
    wf = threads_stack.wf

    async def main() -> None:
        result = await chord([wf.fail.s()], wf.tsum.s()).aapply_async()
        await result.aget(timeout=TIMEOUT)

    with threads_stack.worker(), pytest.raises(ChordError):
        asyncio.run(main())


def test_adelay_of_a_chain_passes_partial_arguments(threads_stack: Stack) -> None:
    wf = threads_stack.wf

    async def main() -> int:
        result = await chain(wf.add.s(1), wf.add.s(1)).adelay(5)
        return int(await result.aget(timeout=TIMEOUT))

    with threads_stack.worker():
        assert asyncio.run(main()) == 7
