"""Work no request waits for, and work many requests share (agentgw/background.py)."""

from __future__ import annotations

import asyncio

from agentgw.background import OneAtATime


async def test_callers_arriving_while_it_runs_share_one_run_and_a_caller_leaving_does_not_end_it() -> None:
    runs = 0
    release = asyncio.Event()

    async def work() -> int:
        nonlocal runs
        runs += 1
        await release.wait()
        return runs

    shared = OneAtATime(work)
    leaving = asyncio.create_task(shared())
    staying = [asyncio.create_task(shared()) for _ in range(5)]
    await asyncio.sleep(0)
    leaving.cancel()
    release.set()
    assert await asyncio.gather(*staying) == [1] * 5
    assert await shared() == 2  # the next call after a run ended runs it again


async def test_a_failed_run_fails_its_callers_and_the_next_call_runs_again() -> None:
    attempts = 0

    async def work() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise OSError("refused")
        return "open"

    shared = OneAtATime(work)
    outcomes = await asyncio.gather(shared(), shared(), return_exceptions=True)
    assert [type(o) for o in outcomes] == [OSError, OSError]
    assert await shared() == "open" and attempts == 2
