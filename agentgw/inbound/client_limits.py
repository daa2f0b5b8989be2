"""Slow and surplus clients, held at the connection (contract 11, "Client side, same rules").

uvicorn bounds only the idle time between requests (`timeout_keep_alive`): a
client that trickles its request head, or the body of a request answered
without reading it (a 401, a 404), keeps its connection for as long as it likes,
each byte resetting the idle timer. This protocol is uvicorn's httptools one
plus one deadline per connection:

- the request head must be complete `header_timeout` after the connection opens
  (the first request) or after its first byte (the next ones on a keep-alive
  connection: until then uvicorn's idle timer runs);
- the body must be complete `body_timeout` after the head, plus a grace that
  leaves an endpoint reading it (`mcp_request.read_body`) the time to answer 408
  itself; this deadline is the backstop for bodies nobody reads.

A client past a deadline is disconnected and one JSON line logged.

At most `max_connections` connections are served at once. Whether a connection
is served is decided once, when it opens, so a crowd of newcomers never refuses
the next request of a client already served. A connection beyond the limit is
not served: its request gets 503 with `Retry-After` and the connection closes,
instead of a bare close, so a client that sent a POST knows it was not processed
and may retry it. (uvicorn's own `limit_concurrency` answers plain text, counts
the refused connections against the served ones and serves one fewer than set.)
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import Any, cast

from starlette.types import Receive, Scope, Send
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from agentgw.config import ServerConfig
from agentgw.errors import ServerBusy

log = logging.getLogger("agentgw.connections")

# read_body's own deadline starts once the endpoint runs (after authentication): this
# much later the connection is closed even if no endpoint read the body.
BODY_ANSWER_GRACE = 2.0


@dataclass(frozen=True)
class ClientLimits:
    header_timeout: float
    body_timeout: float
    max_connections: int  # in this process

    @classmethod
    def of(cls, server: ServerConfig) -> ClientLimits:
        # Each worker accepts on its own: a share of the limit each keeps the total within it.
        share = max(1, server.max_connections // max(1, server.workers))
        return cls(float(server.header_timeout), float(server.body_timeout), share)


async def _refuse_surplus(scope: Scope, receive: Receive, send: Send) -> None:
    busy = ServerBusy("Server busy: too many connections", headers={"retry-after": "1", "connection": "close"})
    await busy.send(scope, send)


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the head and body deadlines and the connection limit."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ClientLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self.served = True
        # One lazy timer per connection: phases only move `_expires_at`, so a request costs two
        # clock reads instead of scheduling and cancelling timers; the timer re-arms itself when
        # it fires early.
        self._expires_at: float | None = None
        self._reason = ""
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.served = len(self.connections) < self.limits.max_connections
        super().connection_made(transport)
        if not self.served:
            self.connections.discard(self)  # counts against nobody; uvicorn's shutdown need not wait for it
        self._arm(self.limits.header_timeout, "header_timeout")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._expires_at is None:
            self._arm(self.limits.header_timeout, "header_timeout")

    def on_headers_complete(self) -> None:
        self._disarm()
        if not self.served:
            log.warning("connection refused", extra={"fields": self._fields("max_connections")})
            self.app = _refuse_surplus
        super().on_headers_complete()
        if not (self.parser.should_upgrade() and self._should_upgrade()):
            self._arm(self.limits.body_timeout + BODY_ANSWER_GRACE, "body_timeout")

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _should_upgrade(self) -> bool:
        # A surplus connection gets its 503 over HTTP, never a WebSocket.
        return self.served and super()._should_upgrade()

    def _arm(self, seconds: float, reason: str) -> None:
        self._expires_at, self._reason = self.loop.time() + seconds, reason
        if self._timer is None:
            self._timer = self.loop.call_later(seconds, self._check)

    def _disarm(self) -> None:
        self._expires_at = None

    def _check(self) -> None:
        self._timer = None
        if self._expires_at is None:
            return
        remaining = self._expires_at - self.loop.time()
        if remaining > 0:
            self._timer = self.loop.call_later(remaining, self._check)
            return
        self._expires_at = None
        if self.transport.is_closing():
            return
        log.warning("slow client disconnected", extra={"fields": self._fields(self._reason)})
        self.transport.close()

    def _fields(self, reason: str) -> dict[str, Any]:
        client = f"{self.client[0]}:{self.client[1]}" if self.client else None
        return {"level": "warning", "logger": log.name, "event": "client_refusal", "reason": reason, "client": client}


def http_protocol(limits: ClientLimits) -> type[asyncio.Protocol]:
    """What `uvicorn.run(http=...)` takes. A partial, not a class made here, because worker
    processes receive it pickled; uvicorn only ever calls it with keyword arguments."""
    return cast(type[asyncio.Protocol], functools.partial(LimitedHttpToolsProtocol, limits=limits))
