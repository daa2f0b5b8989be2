"""A2A agents: the replicas of each agent, their cards, and their JSON-RPC endpoints.

The configured backend URL is the only place a call goes (contract 11): a card
may name the JSON-RPC path on that same origin, never another host, so a card
cannot redirect every caller's traffic.
"""

from __future__ import annotations

import functools
import itertools
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, urlsplit

from agentgw import jsonrpc
from agentgw.auth.principal import Principal
from agentgw.config import A2AAgentConfig
from agentgw.errors import BadAgentCard, GatewayError, UpstreamUnavailable
from agentgw.observability.refusals import Refusals
from agentgw.upstream.credentials import Presenting, credentials_for, sent_with
from agentgw.upstream.http import ConnectionPool, UpstreamBodyTooLarge, UpstreamConnectionError, UpstreamTimeoutError

CARD_PATHS = ("/.well-known/agent-card.json", "/.well-known/agent.json")
CARD_TIMEOUT = 5.0
# A card is a small document: a larger one is refused, not held in memory.
MAX_CARD_BYTES = 1024 * 1024
# A cached card is revalidated (If-None-Match) after this long.
CARD_FRESH_FOR = 30.0
# A replica that could not be reached gets no new tasks for this long, then is tried again.
RETRY_DOWN_AFTER = 2.0
# A path taken from a card goes into a request line: visible ASCII only, nothing that could end the line.
_SAFE_PATH = re.compile(r"[\x21-\x7e]*")


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

    def __init__(
        self, config: A2AAgentConfig, http: ConnectionPool, refusals: Refusals, env: Mapping[str, str]
    ) -> None:
        self.name = config.name
        self.credentials = credentials_for(config.auth, http, config.name, env)
        self.replicas = [Replica(b.url.rstrip("/")) for b in config.backends]
        self._by_url = {r.base_url: r for r in self.replicas}
        self._http = http
        self._refusals = refusals
        self._round_robin = itertools.count()

    def presenting(self, caller: Principal | None) -> Presenting | None:
        """What a request of `caller` presents to this agent (contract 14); None: nothing."""
        return None if self.credentials is None else Presenting(self.credentials, caller)

    def replica(self, base_url: str) -> Replica | None:
        return self._by_url.get(base_url)

    def order(self) -> list[Replica]:
        """Replicas for a new task: round robin over those not known to be down, then the rest."""
        start = next(self._round_robin) % len(self.replicas)
        rotated = self.replicas[start:] + self.replicas[:start]
        return [r for r in rotated if not r.down] + [r for r in rotated if r.down]

    async def card(self, replica: Replica) -> dict[str, Any]:
        """The replica's card, checked to be a card; BadAgentCard (502) when it is not."""
        if replica.card is not None and time.monotonic() - replica.checked_at < CARD_FRESH_FOR:
            return replica.card
        headers = {"accept": "application/json"}
        if replica.etag and replica.card is not None:
            headers["if-none-match"] = replica.etag
        # A card serves every caller: it is fetched with the agent's own credentials, none on a caller's behalf.
        caller_free = self.credentials is not None and not self.credentials.for_each_caller
        presenting = self.presenting(None) if caller_free else None
        for path in CARD_PATHS:
            url = replica.base_url + path
            try:
                get = functools.partial(self._http.request, "GET", url, body=None, timeout=CARD_TIMEOUT)
                response = await sent_with(presenting, headers, get)
                try:
                    body = await response.read(CARD_TIMEOUT, limit=MAX_CARD_BYTES)
                finally:
                    response.release()
            except UpstreamBodyTooLarge as exc:
                self._refusals.record(self.name, BadAgentCard.reason, "card too large")
                raise BadAgentCard(f"Agent {self.name!r} serves a card larger than {MAX_CARD_BYTES} bytes") from exc
            except (UpstreamConnectionError, UpstreamTimeoutError) as exc:
                replica.mark_down()
                raise UpstreamUnavailable(f"Agent {self.name!r} unreachable") from exc
            replica.mark_up()
            if response.status == 304 and replica.card is not None:
                replica.checked_at = time.monotonic()
                return replica.card
            if response.status == 200:
                card = self._checked_card(body)
                replica.card, replica.etag = card, response.header("etag")
                replica.checked_at = time.monotonic()
                replica.rpc_url = self._rpc_url(card, replica.base_url)
                return card
        raise UpstreamUnavailable(f"Agent {self.name!r} serves no agent card")

    async def rpc_url(self, replica: Replica) -> str:
        if replica.rpc_url is None:
            await self.card(replica)
        assert replica.rpc_url is not None
        return replica.rpc_url

    def _checked_card(self, body: bytes) -> dict[str, Any]:
        # The strict parser: nesting past 64, lone surrogates and duplicate keys are the card's fault.
        try:
            card: Any = jsonrpc.parse(body)
            jsonrpc.serialise(card)
        except GatewayError:
            card = None
        return self.checked_card(card)

    def checked_card(self, card: Any) -> dict[str, Any]:
        """`card` if it is an agent card the gateway can serve; else the refusal is recorded, BadAgentCard."""
        problem = card_problem(card)
        if problem is not None:
            self._refusals.record(self.name, BadAgentCard.reason, problem)
            raise BadAgentCard(f"Agent {self.name!r} serves no valid agent card")
        checked: dict[str, Any] = card
        return checked

    def _rpc_url(self, card: dict[str, Any], base_url: str) -> str:
        """Where calls go: the card's JSON-RPC path on the configured origin, else the configured URL."""
        named = card_rpc_url(card)
        if named is None:
            return base_url
        confined = same_origin_url(named, base_url)
        if confined is None:
            self._refusals.record(self.name, "card_url_ignored", "card names a JSON-RPC URL on another origin")
            return base_url
        return confined


def card_problem(card: Any) -> str | None:
    """Why a parsed card (None: not JSON) is not one the gateway can serve, or None when it is one."""
    if not isinstance(card, dict):
        return "not a JSON object"
    if not isinstance(card.get("name"), str):
        return "no name"
    interfaces = card.get("supportedInterfaces", [])
    if not isinstance(interfaces, list) or not all(_is_interface(i) for i in interfaces):
        return "supportedInterfaces is not a list of interfaces"
    if not isinstance(card.get("url", ""), str) or not isinstance(card.get("preferredTransport", ""), str):
        return "url or preferredTransport is not a string"
    if not isinstance(card.get("skills", []), list):
        return "skills is not a list"
    return None


def _is_interface(interface: Any) -> bool:
    return (
        isinstance(interface, dict)
        and isinstance(interface.get("url", ""), str)
        and isinstance(interface.get("protocolBinding", ""), str)
    )


def card_rpc_url(card: dict[str, Any]) -> str | None:
    """The JSON-RPC endpoint a card names: v1 `supportedInterfaces`, else 0.3 `url`."""
    for interface in card.get("supportedInterfaces") or []:
        if str(interface.get("protocolBinding", "")).upper() == "JSONRPC" and interface.get("url"):
            return str(interface["url"])
    if str(card.get("preferredTransport", "JSONRPC")).upper() == "JSONRPC" and card.get("url"):
        return str(card["url"])
    return None


def same_origin_url(url: str, base_url: str) -> str | None:
    """`url`'s path and query on `base_url`'s origin, when `url` is on that origin under its path; else None.

    The result is built from the configured origin, never from `url`'s authority,
    so no reading of userinfo or odd hosts can send it anywhere else.
    """
    try:
        named, base = urlsplit(url), urlsplit(base_url)
        if _origin(named) != _origin(base) or named.username is not None or named.password is not None:
            return None
    except ValueError:  # an invalid port, say
        return None
    if not _SAFE_PATH.fullmatch(named.path) or not _SAFE_PATH.fullmatch(named.query):
        return None
    # Under the configured path too: one host may serve other things beside the agent.
    prefix = base.path.rstrip("/")
    if ".." in named.path.split("/") or not (named.path == prefix or named.path.startswith(prefix + "/")):
        return None
    path = named.path or "/"
    return f"{base.scheme}://{base.netloc}{path}" + (f"?{named.query}" if named.query else "")


def _origin(parts: SplitResult) -> tuple[str, str, int]:
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or (443 if scheme == "https" else 80)
