"""A2A agents: the replicas of each agent, their cards, and their JSON-RPC endpoints."""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from agentgw.config import A2AAgentConfig
from agentgw.errors import UpstreamUnavailable
from agentgw.upstream.http import ConnectionPool, UpstreamConnectionError, UpstreamTimeoutError

CARD_PATHS = ("/.well-known/agent-card.json", "/.well-known/agent.json")
CARD_TIMEOUT = 5.0
# A cached card is revalidated (If-None-Match) after this long.
CARD_FRESH_FOR = 30.0
# A replica that could not be reached gets no new tasks for this long, then is tried again.
RETRY_DOWN_AFTER = 2.0


@dataclass
class Replica:
    base_url: str
    card: dict[str, Any] | None = None
    etag: str | None = None
    checked_at: float = 0.0
    down_until: float = 0.0  # a replica that failed is tried again for new tasks after this
    rpc_url: str | None = field(default=None)

    @property
    def down(self) -> bool:
        return time.monotonic() < self.down_until

    def mark_down(self) -> None:
        self.down_until = time.monotonic() + RETRY_DOWN_AFTER

    def mark_up(self) -> None:
        self.down_until = 0.0


class AgentReplicas:
    """One agent's replicas; the card of each, fetched and cached with its ETag."""

    def __init__(self, config: A2AAgentConfig, http: ConnectionPool) -> None:
        self.name = config.name
        self.replicas = [Replica(b.url.rstrip("/")) for b in config.backends]
        self._by_url = {r.base_url: r for r in self.replicas}
        self._http = http
        self._round_robin = itertools.count()

    def replica(self, base_url: str) -> Replica | None:
        return self._by_url.get(base_url)

    def order(self) -> list[Replica]:
        """Replicas for a new task: round robin over those not known to be down, then the rest."""
        start = next(self._round_robin) % len(self.replicas)
        rotated = self.replicas[start:] + self.replicas[:start]
        return [r for r in rotated if not r.down] + [r for r in rotated if r.down]

    async def card(self, replica: Replica) -> dict[str, Any]:
        if replica.card is not None and time.monotonic() - replica.checked_at < CARD_FRESH_FOR:
            return replica.card
        headers = {"accept": "application/json"}
        if replica.etag and replica.card is not None:
            headers["if-none-match"] = replica.etag
        for path in CARD_PATHS:
            try:
                response = await self._http.request("GET", replica.base_url + path, headers, None, CARD_TIMEOUT)
                try:
                    body = await response.read(CARD_TIMEOUT)
                finally:
                    response.release()
            except (UpstreamConnectionError, UpstreamTimeoutError) as exc:
                replica.mark_down()
                raise UpstreamUnavailable(f"Agent {self.name!r} unreachable") from exc
            replica.mark_up()
            if response.status == 304 and replica.card is not None:
                replica.checked_at = time.monotonic()
                return replica.card
            if response.status == 200:
                card = json.loads(body)
                if not isinstance(card, dict):
                    break
                replica.card, replica.etag = card, response.header("etag")
                replica.checked_at = time.monotonic()
                replica.rpc_url = _rpc_url(card, replica.base_url)
                return card
        raise UpstreamUnavailable(f"Agent {self.name!r} serves no agent card")

    async def rpc_url(self, replica: Replica) -> str:
        if replica.rpc_url is None:
            await self.card(replica)
        assert replica.rpc_url is not None
        return replica.rpc_url


def _rpc_url(card: dict[str, Any], base_url: str) -> str:
    """The JSON-RPC endpoint a card names: v1 `supportedInterfaces`, else 0.3 `url`."""
    for interface in card.get("supportedInterfaces") or []:
        if isinstance(interface, dict) and str(interface.get("protocolBinding", "")).upper() == "JSONRPC":
            return str(interface["url"])
    if card.get("preferredTransport", "JSONRPC").upper() == "JSONRPC" and isinstance(card.get("url"), str):
        return str(card["url"])
    return base_url
