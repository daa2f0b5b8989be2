"""Work no request waits for (a store's follow-up, an answer to a backend), kept alive until it ends:
the event loop holds tasks only weakly."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

_RUNNING: set[asyncio.Future[Any]] = set()


def in_background(work: Coroutine[Any, Any, Any]) -> None:
    task = asyncio.ensure_future(work)
    _RUNNING.add(task)
    task.add_done_callback(_RUNNING.discard)
