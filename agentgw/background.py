"""Work no request waits for (a store's follow-up, an answer to a backend), kept alive until it ends:
the event loop holds tasks only weakly."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_RUNNING: set[asyncio.Future[Any]] = set()


def in_background(work: Coroutine[Any, Any, Any]) -> None:
    task = asyncio.ensure_future(work)
    _RUNNING.add(task)
    task.add_done_callback(_RUNNING.discard)


class OneAtATime(Generic[T]):
    """`work` run once for every caller that asks while it runs: they all wait on the same run, and
    one that goes away leaves it running for the others."""

    def __init__(self, work: Callable[[], Awaitable[T]]) -> None:
        self._work = work
        self._running: asyncio.Future[T] | None = None

    async def __call__(self) -> T:
        if self._running is None:
            running = self._running = asyncio.ensure_future(self._work())
            running.add_done_callback(self._done)
        return await asyncio.shield(self._running)

    def _done(self, _: asyncio.Future[T]) -> None:
        self._running = None

    def cancel(self) -> None:
        if self._running is not None:
            self._running.cancel()
