"""The one place transport errors become gateway errors (as httpx's `map_httpcore_exceptions`).

The HTTP client (`upstream/http.py`) raises transport errors of its own. Each
kind of upstream party has them answered as its own gateway errors, named once
here, so that what a backend, agent or provider fails at is always that party's
502, 503 or 504, never the client's fault.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

from agentgw.errors import BadBackendAnswer, GatewayError, UpstreamAuthFailed, UpstreamTimeout, UpstreamUnavailable
from agentgw.upstream.http import UpstreamBodyTooLarge, UpstreamConnectionError, UpstreamTimeoutError


class Faults(NamedTuple):
    """The gateway error each transport failure of one kind of party becomes."""

    unreachable: Callable[[str], GatewayError]
    timed_out: Callable[[str], GatewayError]
    too_large: Callable[[str], GatewayError]

    @contextlib.contextmanager
    def mapped(self, party: str) -> Iterator[None]:
        """Transport errors raised inside become this party's gateway errors, naming `party`."""
        try:
            yield
        except UpstreamTimeoutError as exc:
            raise self.timed_out(f"{party} did not answer in time") from exc
        except UpstreamBodyTooLarge as exc:
            raise self.too_large(f"{party} sent an answer larger than the gateway reads") from exc
        except UpstreamConnectionError as exc:
            raise self.unreachable(f"{party} unreachable: {exc}") from exc


# MCP backends and A2A agents.
BACKEND = Faults(UpstreamUnavailable, UpstreamTimeout, BadBackendAnswer)
# The token endpoints the gateway fetches upstream credentials from (contract 14).
TOKEN_ENDPOINT = Faults(UpstreamAuthFailed, UpstreamAuthFailed, UpstreamAuthFailed)
