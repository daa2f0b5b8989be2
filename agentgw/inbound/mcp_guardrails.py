"""What an MCP backend sends toward the client, held to the GuardrailPolicy in force (contract 15).

Each message of a backend's answer or stream passes `MessageScreen.screened` before the client
gets it: results, errors and notifications are scanned (redacted, blocked or reported), and the
backend's own requests (`sampling/createMessage`, `elicitation/create`, any other) are relayed
or refused. A refused request never reaches the client: the backend gets the JSON-RPC error
-32053 in its place, so it does not wait for an answer that will not come.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from agentgw import jsonrpc
from agentgw.errors import GuardrailBlocked
from agentgw.observability.guardrail_actions import GuardrailActions, Where
from agentgw.policy.guardrails import Guard

log = logging.getLogger("agentgw.guardrails")

SAMPLING = "sampling/createMessage"
ELICITATION = "elicitation/create"
# Server-to-client requests whose every decision is audited, relayed ones included.
_GOVERNED = frozenset({SAMPLING, ELICITATION})

# Sends the JSON-RPC answer to a refused request back to the backend that asked (in the background).
AnswerBackend = Callable[[bytes], None]


class MessageScreen:
    """One answer's or stream's messages against one guard."""

    __slots__ = ("_actions", "_answer_backend", "_guard", "_where")

    def __init__(self, guard: Guard, actions: GuardrailActions, where: Where, answer_backend: AnswerBackend) -> None:
        self._guard = guard
        self._actions = actions
        self._where = where
        self._answer_backend = answer_backend

    def screened(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """The message as the client may get it (the same object when nothing changed); None: dropped."""
        method = message.get("method")
        if isinstance(method, str) and "id" in message:
            return self._server_request(message, method)
        scan = self._guard.scan(message)
        if scan.findings:
            self._actions.found(scan.findings, self._at(method if isinstance(method, str) else "answer"))
        if scan.blocked is None:
            return scan.value  # type: ignore[no-any-return]
        if method is not None:
            return None  # a notification holding what is blocked is dropped
        blocked = GuardrailBlocked(
            f"The answer held what a guardrail blocks ({scan.blocked.detector})", scan.blocked.detector
        )
        return {"jsonrpc": "2.0", "id": message.get("id"), "error": blocked.error_object()}

    def _server_request(self, message: dict[str, Any], method: str) -> dict[str, Any] | None:
        where = self._at(method)
        refusal = self._refusal(message, method)
        if refusal is None:
            scan = self._guard.scan(message)
            if scan.findings:
                self._actions.found(scan.findings, where)
            if scan.blocked is None:
                if method in _GOVERNED:
                    self._actions.relayed(where)
                return scan.value  # type: ignore[no-any-return]
            refusal = (scan.blocked.detector, f"the request held what a guardrail blocks ({scan.blocked.detector})")
        else:
            self._actions.refused(where, refusal[0])
        detector, why = refusal
        error = GuardrailBlocked(f"Refused by the gateway: {why}", detector)
        self._answer_backend(jsonrpc.serialise({"jsonrpc": "2.0", "id": message["id"], "error": error.error_object()}))
        return None

    def _refusal(self, message: dict[str, Any], method: str) -> tuple[str, str] | None:
        """Why a sampling or elicitation request may not reach the client: (detector, words)."""
        if method == SAMPLING and self._guard.sampling == "deny":
            return "sampling", "sampling is denied"
        if method == ELICITATION:
            params = message.get("params")
            why = self._guard.elicitation_refusal(params if isinstance(params, dict) else {})
            if why is not None:
                return "elicitation", why
        return None

    def _at(self, carrier: str) -> Where:
        where = self._where
        return Where(where.target, where.subject, where.session_id, carrier)
