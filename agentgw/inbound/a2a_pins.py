"""Which replica holds an A2A task or context, and for whom (contracts 8 and 11).

A task lives on the one agent replica that made it, so a later call naming it
must go there; and it belongs to the subject that made it, so no one else may
reach it through the gateway. Both facts are recorded ("pinned") in the session
store when a response first names the id, and read back when a call names it.

The agent is not trusted to say whose an id is: the first answer naming an id
owns it for good, and an answer the gateway reads for ids must be a JSON-RPC
response to the request it forwarded.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from agentgw import jsonrpc, sse
from agentgw.auth.principal import Principal
from agentgw.errors import BadBackendAnswer, GatewayError
from agentgw.observability.refusals import Refusals
from agentgw.sessions.store import KeyValues

log = logging.getLogger("agentgw.inbound.a2a")

PIN_TTL = 7 * 24 * 3600.0


class Pins:
    """Records which replica holds the tasks and contexts a response names, and for whom.

    The first answer naming an id owns it (claimed atomically in the store); an
    answer naming an id another subject owns is the agent's lie or a collision,
    and is refused rather than relayed.
    """

    def __init__(
        self, store: KeyValues, refusals: Refusals, agent: str, replica: str, principal: Principal | None
    ) -> None:
        self._store = store
        self._refusals = refusals
        self._agent = agent
        self._principal = principal
        self._owner = json.dumps(
            {
                "replica": replica,
                "iss": principal.issuer if principal else None,
                "sub": principal.subject if principal else None,
            }
        )
        self._seen: set[tuple[str, str]] = set()
        self._events = sse.SseDecoder()

    async def record(self, result: dict[str, Any]) -> None:
        for kind, value in _ids_in_result(result):
            if (kind, value) in self._seen:
                continue
            self._seen.add((kind, value))
            held = await self._store.claim_value(pin_key(self._agent, kind, value), self._owner, PIN_TTL)
            if held != self._owner and not owned(json.loads(held), self._principal):
                self._refusals.record(self._agent, "foreign_id", f"an answer names a {kind} of another subject")
                raise BadBackendAnswer(f"Agent {self._agent!r} answered with a {kind} of another subject")

    async def feed(self, chunk: bytes) -> None:
        """Read the ids out of a relayed event stream as its events complete; raising ends the stream
        before the chunk reaches the client."""
        for event in self._events.feed(chunk):
            try:
                answer = event.json()
            except (ValueError, RecursionError):
                # Nothing the gateway acts on: ids it never pinned reach no one through it.
                log.warning("agent %s sent a stream event that is not JSON", self._agent)
                continue
            if isinstance(answer, dict) and isinstance(answer.get("result"), dict):
                await self.record(answer["result"])


def pin_key(agent: str, kind: str, value: str) -> str:
    return f"a2a:{agent}:{kind}:{value}"


def owned(owner: dict[str, Any], principal: Principal | None) -> bool:
    if owner.get("sub") is None:
        return True  # made while no SessionAuthPolicy applied
    return principal is not None and (principal.issuer, principal.subject) == (owner.get("iss"), owner.get("sub"))


def _ids_in_result(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The task and context ids a response names, in either generation's shape."""
    found: list[tuple[str, str]] = []
    candidates = [result.get(k) for k in ("task", "message", "statusUpdate", "artifactUpdate")] + [result]
    for item in candidates:
        if not isinstance(item, dict):
            continue
        is_task = item is result.get("task") or item.get("kind") == "task"
        task_id = id_text(item.get("id")) if is_task else id_text(item.get("taskId"))
        if task_id is not None:
            found.append(("task", task_id))
        context_id = id_text(item.get("contextId"))
        if context_id is not None:
            found.append(("context", context_id))
    return found


def answer_to(body: bytes, request_id: Any) -> dict[str, Any] | None:
    """The agent's answer when it is a JSON-RPC response to `request_id`, else None.

    Read with the gateway's strict parser, so a client reading duplicate keys or odd
    numbers another way cannot see other ids than the ones the gateway pinned.
    """
    try:
        answer = jsonrpc.parse(body)
        jsonrpc.serialise(answer)  # lone surrogates: the agent's fault, refused here
    except GatewayError:
        return None
    if not isinstance(answer, dict) or answer.get("jsonrpc") != "2.0" or ("result" in answer) == ("error" in answer):
        return None
    same_id = type(answer.get("id")) is type(request_id) and answer.get("id") == request_id
    if "error" in answer:
        # An error may answer a request the agent could not read (id null).
        return answer if isinstance(answer["error"], dict) and (same_id or answer.get("id") is None) else None
    return answer if same_id else None


def id_text(value: Any) -> str | None:
    """A task or context id as the gateway pins it: a non-empty string, else None."""
    return value if isinstance(value, str) and value else None
