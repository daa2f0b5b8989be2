"""A steady load of MCP clients behind a load balancer, and what it got while something failed.

Each client holds a session of its own and sends one `whoami` tools/call at a time to a gateway
replica picked round-robin, as a load balancer would. A request whose connection fails (refused,
reset, closed before the answer) is sent once more to another replica, which a load balancer also
does, and the failed replica leaves the rotation (a passive health check). The example backend
answers `whoami` with its name and the backend session's call count, so each answer tells whether
the session still runs where it ran: the same backend and a count that climbs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import httpx2

from tests.support import JSON_HEADERS, RawResponse, raw_session, tool_call

# Contract 17: while no master answers, every request is answered (200 or 503) within 2 s, and
# the gateway follows a new master within 5 s.
ANSWER_WITHIN = 2.0
FOLLOWED_WITHIN = 5.0
CLIENTS = 8
# Load before the disruption: the store's replicas hold every session by then.
WARMUP = 2.0
# Load past the settle period, where every answer must be a 200 again.
TAIL = 2.0
# Between one client's requests: a steady load that leaves the gateways' CPUs some headroom, so a
# slow answer is the disruption's doing, not the load's.
PAUSE = 0.05
MAX_REQUESTS = 1000  # per client, a bound beside the time bound
LOAD_LIMIT = 60.0  # no load runs longer, whatever the disruption takes
PROTOCOL_VERSION = "2025-11-25"
WHOAMI = tool_call("whoami", {})
DETAIL_LENGTH = 160


class Kind(StrEnum):
    OK = "200"  # a whoami answer
    UNAVAILABLE = "503"  # with Retry-After
    ERROR = "error"  # anything else, no answer within ANSWER_WITHIN included


class ReplicaDown(Exception):
    """The connection to a replica failed before an answer came."""


@dataclass(frozen=True)
class Outcome:
    """One client request, retry included, as the client saw it."""

    started: float
    took: float
    kind: Kind
    status: int | None = None  # None: no answer
    served: tuple[str, int] | None = None  # whoami's backend and count
    detail: str = ""  # what came back, for an error
    fled: int | None = None  # the replica whose failed connection made the retry

    def overlaps(self, first: float, last: float) -> bool:
        """Whether the request was open at some time between `first` and `last`."""
        return self.started <= last and self.started + self.took >= first


@dataclass
class LoadBalancer:
    """Round-robin over the replicas still in rotation."""

    ports: list[int]
    down: set[int] = field(default_factory=set)
    turn: int = 0

    def pick(self, avoid: int | None = None) -> int:
        live = [port for port in self.ports if port not in self.down and port != avoid]
        if not live:
            raise RuntimeError(f"no replica left in rotation of {self.ports}")
        self.turn += 1
        return live[self.turn % len(live)]


@dataclass
class Session:
    """One client's session, and the backend session it must keep."""

    session_id: str
    backend: str
    count: int
    lost: str | None = None  # why the session is lost, once it is

    def follow(self, outcome: Outcome) -> None:
        """Judge an answer: a 404, another backend or a count that does not climb loses the session."""
        if self.lost:
            return
        if outcome.status == 404:
            self.lost = f"404: {outcome.detail}"
        elif outcome.served is not None:
            backend, count = outcome.served
            if backend != self.backend or count <= self.count:
                self.lost = f"was {self.backend} {self.count}, then {backend} {count}"
            self.count = count


async def _send(http: httpx2.AsyncClient, port: int, session_id: str) -> httpx2.Response:
    headers = [*JSON_HEADERS, ("Mcp-Session-Id", session_id), ("MCP-Protocol-Version", PROTOCOL_VERSION)]
    try:
        # A bound on the whole exchange: httpx's timeouts bound each read, not the answer.
        async with asyncio.timeout(ANSWER_WITHIN):
            return await http.post(f"http://127.0.0.1:{port}/mcp/v1", headers=headers, content=WHOAMI)
    except httpx2.TimeoutException as exc:
        raise TimeoutError from exc
    except (httpx2.NetworkError, httpx2.RemoteProtocolError) as exc:
        raise ReplicaDown(f"{port}: {exc!r}") from exc


def _whoami(response: httpx2.Response) -> tuple[str, int] | None:
    """The backend and count a whoami answer names, if the answer is one."""
    try:
        message = RawResponse(response.status_code, list(response.headers.items()), response.content).message()
        backend, count = message["result"]["content"][0]["text"].split()
        return backend, int(count)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None


def _outcome(response: httpx2.Response, started: float, fled: int | None) -> Outcome:
    took = time.monotonic() - started
    status = response.status_code
    served = _whoami(response) if status == 200 else None
    if served is not None:
        return Outcome(started, took, Kind.OK, status, served, fled=fled)
    if status == 503 and response.headers.get("retry-after"):
        return Outcome(started, took, Kind.UNAVAILABLE, status, fled=fled)
    detail = f"{status} retry-after={response.headers.get('retry-after')} {response.text[:DETAIL_LENGTH]}"
    return Outcome(started, took, Kind.ERROR, status, detail=detail, fled=fled)


async def request(http: httpx2.AsyncClient, balancer: LoadBalancer, session_id: str) -> Outcome:
    """One whoami through the load balancer, retried once on another replica if the connection fails."""
    started = time.monotonic()
    port = balancer.pick()
    fled = None
    try:
        try:
            response = await _send(http, port, session_id)
        except ReplicaDown:
            balancer.down.add(port)
            fled = port
            response = await _send(http, balancer.pick(avoid=port), session_id)
    except TimeoutError:
        detail = f"no answer within {ANSWER_WITHIN} s"
        return Outcome(started, time.monotonic() - started, Kind.ERROR, detail=detail, fled=fled)
    except ReplicaDown as exc:
        detail = f"connection failed on the retry too: {exc}"
        return Outcome(started, time.monotonic() - started, Kind.ERROR, detail=detail, fled=fled)
    return _outcome(response, started, fled)


async def open_sessions(http: httpx2.AsyncClient, balancer: LoadBalancer, count: int) -> list[Session]:
    """`count` sessions, opened round-robin, each with its first whoami answered."""
    sessions = []
    for _ in range(count):
        session_id = await raw_session(balancer.pick())
        first = await request(http, balancer, session_id)
        if first.served is None:
            raise RuntimeError(f"the first whoami of {session_id} failed: {first.kind} {first.detail}")
        sessions.append(Session(session_id, *first.served))
    return sessions


@dataclass(frozen=True)
class Run:
    """The outcomes of a load, and when the disruption began and ended (monotonic seconds)."""

    outcomes: list[Outcome]
    began: float
    ended: float


async def _drive(
    http: httpx2.AsyncClient,
    balancer: LoadBalancer,
    session: Session,
    outcomes: list[Outcome],
    stop: asyncio.Event,
    deadline: float,
) -> None:
    for _ in range(MAX_REQUESTS):
        if stop.is_set() or session.lost or time.monotonic() > deadline:
            return
        outcome = await request(http, balancer, session.session_id)
        outcomes.append(outcome)
        session.follow(outcome)
        await asyncio.sleep(PAUSE)


async def under_load(
    http: httpx2.AsyncClient,
    balancer: LoadBalancer,
    sessions: Sequence[Session],
    disrupt: Callable[[], object],
    after_settling: Callable[[], object] | None = None,
) -> Run:
    """Load on every session: WARMUP, then `disrupt`, then the settle period, `after_settling` if
    given, and TAIL more (the two calls in a thread: they block). The sleeps are the load's length,
    not waits for a condition."""
    outcomes: list[Outcome] = []
    stop = asyncio.Event()
    deadline = time.monotonic() + LOAD_LIMIT
    drivers = [asyncio.create_task(_drive(http, balancer, s, outcomes, stop, deadline)) for s in sessions]
    try:
        await asyncio.sleep(WARMUP)
        began = time.monotonic()
        await asyncio.to_thread(disrupt)
        ended = time.monotonic()
        await asyncio.sleep(FOLLOWED_WITHIN)
        if after_settling is not None:
            await asyncio.to_thread(after_settling)
        await asyncio.sleep(TAIL)
    finally:
        stop.set()
        await asyncio.gather(*drivers)
    return Run(outcomes, began, ended)


async def check_sessions(http: httpx2.AsyncClient, balancer: LoadBalancer, sessions: Sequence[Session]) -> None:
    """After the settle period every session continues: one more whoami each, answered 200."""
    for session in sessions:
        if session.lost:
            continue
        outcome = await request(http, balancer, session.session_id)
        session.follow(outcome)
        if outcome.kind is not Kind.OK and not session.lost:
            session.lost = f"after the settle period: {outcome.kind} {outcome.detail}"


@dataclass(frozen=True)
class Figures:
    """What one scenario's clients got."""

    scenario: str
    store: str
    requests: int
    ok: int
    unavailable: int
    errors: int
    retried: int
    lost: int
    longest_ms: float
    disruption_ms: float
    late_unavailable: int  # 503s to requests outside the disruption plus FOLLOWED_WITHIN
    fled: frozenset[int]  # the replicas retries left
    problems: tuple[str, ...]  # errors and lost sessions, to read a failure by

    @classmethod
    def of(cls, scenario: str, store: str, run: Run, sessions: Sequence[Session]) -> Figures:
        outcomes = run.outcomes
        counted = {kind: sum(o.kind is kind for o in outcomes) for kind in Kind}
        window_end = run.ended + FOLLOWED_WITHIN
        late = [o for o in outcomes if o.kind is Kind.UNAVAILABLE and not o.overlaps(run.began, window_end)]
        problems = [f"error at {o.started - run.began:+.2f} s: {o.detail}" for o in outcomes if o.kind is Kind.ERROR]
        problems += [f"503 at {o.started - run.began:+.2f} s, outside the window" for o in late]
        problems += [f"session {s.session_id} lost: {s.lost}" for s in sessions if s.lost]
        return cls(
            scenario=scenario,
            store=store,
            requests=len(outcomes),
            ok=counted[Kind.OK],
            unavailable=counted[Kind.UNAVAILABLE],
            errors=counted[Kind.ERROR],
            retried=sum(o.fled is not None for o in outcomes),
            lost=sum(s.lost is not None for s in sessions),
            longest_ms=max((o.took for o in outcomes), default=0.0) * 1000,
            disruption_ms=(run.ended - run.began) * 1000,
            late_unavailable=len(late),
            fled=frozenset(o.fled for o in outcomes if o.fled is not None),
            problems=tuple(problems),
        )


COLUMNS = (
    "scenario",
    "type",
    "requests",
    "200",
    "503",
    "errors",
    "retried",
    "sessions lost",
    "longest answer ms",
    "disruption ms",
)


def table(rows: Sequence[Figures]) -> str:
    """The figures as a plain-text table, one row per scenario."""
    cells = [COLUMNS] + [
        (
            row.scenario,
            row.store,
            str(row.requests),
            str(row.ok),
            str(row.unavailable),
            str(row.errors),
            str(row.retried),
            str(row.lost),
            f"{row.longest_ms:.0f}",
            f"{row.disruption_ms:.0f}",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]

    def render(line: Sequence[str]) -> str:
        # Names left-aligned, figures right-aligned.
        aligned = (
            cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        return "  ".join(aligned)

    return "\n".join([render(cells[0]), "  ".join("-" * w for w in widths), *map(render, cells[1:])])
