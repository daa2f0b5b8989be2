"""The policies in force, swapped whole when their files change (hot reload).

A change that fails validation is refused whole and logged with `file:line`;
the previous policies stay in force. Sessions are untouched either way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path

from agentgw.auth.jwt import Authenticator
from agentgw.policy.engine import PolicyEngine
from agentgw.policy.guardrails import Guardrails
from agentgw.policy.loader import load_policies, policy_files
from agentgw.policy.model import PoisoningDetection, PolicySet
from agentgw.typed_yaml import ConfigError
from agentgw.upstream.http import ConnectionPool

log = logging.getLogger("agentgw.policy")

RELOAD_INTERVAL = 0.5


class LivePolicies:
    """What every request reads: the PolicySet, its compiled engine and guardrails, its authenticator."""

    def __init__(self, paths: list[str], policies: PolicySet, env: Mapping[str, str], http: ConnectionPool) -> None:
        self.paths = paths
        self._env = env
        self._http = http
        self.policies = policies
        self.engine = PolicyEngine(policies.tools)
        self.guardrails = Guardrails(policies.guardrails)
        self.authenticator = self._authenticator(policies)
        self._detection: dict[str, PoisoningDetection] = {}
        self._seen = self._snapshot()

    def _authenticator(self, policies: PolicySet) -> Authenticator | None:
        return Authenticator(policies.auth, self._env, self._http) if policies.auth else None

    def detection(self, target: str) -> PoisoningDetection:
        """Poisoning detection for a target: on, and quarantining, unless every policy that applies says otherwise."""
        detection = self._detection.get(target)
        if detection is None:
            detection = self._detection[target] = self._detection_of(target)
        return detection

    def _detection_of(self, target: str) -> PoisoningDetection:
        specs = [
            p.spec.poisoning_detection
            for p in self.policies.tools
            if p.spec.target_refs is None or target in p.spec.target_refs
        ]
        if not specs:
            return PoisoningDetection()
        enabled = any(s.enabled for s in specs)
        quarantine = any(s.enabled and s.action == "quarantine" for s in specs)
        return PoisoningDetection(enabled=enabled, action="quarantine" if quarantine else "warn")

    def reload(self) -> bool:
        """Load the files again; swap only if every file is valid."""
        try:
            policies = load_policies(self.paths)
            guardrails = Guardrails(policies.guardrails)
            authenticator = self._authenticator(policies)
        except ConfigError as exc:
            log.error("policy change refused, previous policies stay in force: %s", exc)
            return False
        except Exception:  # whatever a file holds, the watcher lives on and the old policies stay
            log.exception("policy change refused, previous policies stay in force")
            return False
        self.policies = policies
        self.engine = PolicyEngine(policies.tools)
        self.guardrails = guardrails
        self.authenticator = authenticator
        self._detection = {}
        log.info("policies reloaded from %d files", len(policies.sources))
        return True

    async def watch(self) -> None:
        """Reload once a change has stood still for one interval, so a file being written
        (an editor saving in place) is never read half-way."""
        pending: dict[str, tuple[float, int]] | None = None
        while True:
            await asyncio.sleep(RELOAD_INTERVAL)
            snapshot = self._snapshot()
            if snapshot == self._seen:
                pending = None
            elif snapshot == pending:
                self._seen = snapshot
                self.reload()
            else:
                pending = snapshot

    def _snapshot(self) -> dict[str, tuple[float, int]]:
        try:
            files = policy_files(self.paths)
        except ConfigError:
            return {}
        state = {}
        for path in files:
            try:
                stat = Path(path).stat()
            except OSError:
                continue
            state[str(path)] = (stat.st_mtime, stat.st_size)
        return state
