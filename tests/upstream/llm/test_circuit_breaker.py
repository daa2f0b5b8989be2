"""Each provider has a circuit breaker: open after N consecutive failures, half-open after a delay (contract 9)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from agentgw.config import CircuitBreakerConfig
from agentgw.typed_yaml import Duration
from agentgw.upstream.llm.router import CircuitBreaker
from tests.stub_providers import StubProvider, async_client, client, llm_config, openai_provider
from tests.support import InProcessGateway, closed_port, poll

QUESTION = [{"role": "user", "content": "anyone there"}]
OPEN_FOR = 2.0  # the half-open delay the tests configure, well above the time a burst of 12 requests takes


def breaker(open_for: str = "2s") -> dict[str, Any]:
    return {"circuit_breaker": {"failures": 5, "open_for": open_for, "probes": 3}}


def ask(gw: InProcessGateway, model: str = "a/x", stream: bool = False) -> int:
    """One request through the SDK; its HTTP status."""
    try:
        with client(gw) as sdk:
            answer = sdk.chat.completions.create(model=model, messages=QUESTION, stream=stream)
            if stream:
                list(answer)
    except openai.APIStatusError as exc:
        assert isinstance(exc.body, dict) and "code" in exc.body  # OpenAI-shaped, whatever the status
        return exc.status_code
    return 200


async def ask_async(sdk: openai.AsyncOpenAI) -> int:
    try:
        await sdk.chat.completions.create(model="a/x", messages=QUESTION)
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
def test_breaker_opens_after_five_failures_and_spares_the_provider(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider], stream: bool
) -> None:
    a = stub("name=a", "status=500")
    gw = serve(llm_config(openai_provider("a", a), **breaker(open_for="30s")))

    statuses = [ask(gw, stream=stream) for _ in range(12)]

    assert statuses == [503] * 12
    assert len(a.chat_requests()) == 5


@pytest.mark.parametrize("retries", [1, 2], ids=["no-retry", "retry"])
async def test_a_concurrent_burst_costs_a_dead_provider_no_more_than_five_requests(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider], retries: int
) -> None:
    a = stub("name=a", "status=500", "delay=0.2")  # all twelve arrive before any failure is counted
    config = llm_config(openai_provider("a", a), retry={"attempts": retries}, **breaker(open_for="30s"))
    gw = serve(config)
    async with async_client(gw) as sdk:
        statuses = await asyncio.gather(*(ask_async(sdk) for _ in range(12)))

    assert statuses == [503] * 12
    assert len(a.chat_requests()) == 5


async def test_a_concurrent_burst_at_a_healthy_provider_is_answered_in_full(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    a = stub("name=a", "delay=0.2")
    gw = serve(llm_config(openai_provider("a", a), **breaker(open_for="30s")))
    async with async_client(gw) as sdk:
        statuses = await asyncio.gather(*(ask_async(sdk) for _ in range(12)))

    assert statuses == [200] * 12
    assert len(a.chat_requests()) == 12


async def test_open_breaker_probes_the_provider_again_after_its_half_open_delay(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    a = stub("name=a", "status=500")
    gw = serve(llm_config(openai_provider("a", a), **breaker()))
    async with async_client(gw) as sdk:
        started = time.monotonic()
        assert [await ask_async(sdk) for _ in range(12)] == [503] * 12
        assert len(a.chat_requests()) == 5

        async def probed() -> bool:
            await ask_async(sdk)
            return len(a.chat_requests()) > 5

        await poll(probed, timeout=OPEN_FOR + 5)
        assert time.monotonic() - started >= OPEN_FOR
        assert len(a.chat_requests()) == 6  # one probe, which failed: the breaker is open again
        assert await ask_async(sdk) == 503
        assert len(a.chat_requests()) == 6


async def test_half_open_breaker_lets_through_at_most_three_probes(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    a = stub("name=a", "status=500")
    gw = serve(llm_config(openai_provider("a", a), **breaker()))
    async with async_client(gw) as sdk:
        assert [await ask_async(sdk) for _ in range(5)] == [503] * 5
        a.set_modes("name=a", "status=500", "delay=1")  # probes stay in flight while the others arrive
        await asyncio.sleep(OPEN_FOR + 0.2)  # the configured half-open delay

        statuses = await asyncio.gather(*(ask_async(sdk) for _ in range(10)))

    assert statuses == [503] * 10
    assert len(a.chat_requests()) == 5 + 3


async def test_breaker_closes_again_when_a_probe_succeeds(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    a = stub("name=a", "status=500")
    gw = serve(llm_config(openai_provider("a", a), **breaker()))
    async with async_client(gw) as sdk:
        assert [await ask_async(sdk) for _ in range(6)] == [503] * 6
        a.set_modes("name=a")  # the provider recovers

        async def answered() -> bool:
            return await ask_async(sdk) == 200

        await poll(answered, timeout=OPEN_FOR + 5)
        assert [await ask_async(sdk) for _ in range(8)] == [200] * 8


def test_open_breaker_moves_an_alias_straight_to_its_next_route(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    a, b = stub("name=a", "status=500"), stub("name=b")
    config = llm_config(
        openai_provider("a", a), openai_provider("b", b), models={"smart": ["a/x", "b/y"]}, **breaker(open_for="30s")
    )
    gw = serve(config)

    answers = [client(gw).chat.completions.create(model="smart", messages=QUESTION) for _ in range(12)]

    assert {answer.choices[0].message.content for answer in answers} == {"b says anyone there"}
    assert len(a.chat_requests()) == 5
    assert len(b.chat_requests()) == 12


def test_breaker_opens_on_refused_connections_too(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    with closed_port() as port:  # nothing listens here yet
        dead = {"name": "a", "type": "openai", "base_url": f"http://127.0.0.1:{port}/v1"}
        gw = serve(llm_config(dead, **breaker(open_for="30s")))
        assert [ask(gw) for _ in range(12)] == [503] * 12

    # The provider comes up on that port: the open breaker keeps traffic off it until the half-open delay.
    revived = stub("name=a", port=port)

    assert [ask(gw) for _ in range(3)] == [503] * 3
    assert revived.chat_requests() == []


async def test_a_proven_provider_is_not_held_back_by_requests_in_flight() -> None:
    """The concurrency gate is for an unproven provider only: one failure among many in flight stalls nothing."""
    breaker = CircuitBreaker(CircuitBreakerConfig(failures=5, open_for=Duration(30), probes=3))
    assert await breaker.admit(0)
    breaker.done(True)
    for _ in range(50):
        assert await breaker.admit(0)
    breaker.done(False)
    assert await breaker.admit(0)


def test_malformed_messages_are_400_and_leave_the_provider_usable(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    a = stub("name=a")
    gw = serve(llm_config(openai_provider("a", a), **breaker(open_for="30s")))
    for messages in (["not an object"], [], [None]):
        with pytest.raises(openai.BadRequestError):
            client(gw).chat.completions.create(model="a/x", messages=messages)  # type: ignore[arg-type]
    assert [ask(gw) for _ in range(6)] == [200] * 6


def test_a_provider_refusing_the_gateways_key_is_502_not_the_clients_401(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    a = stub("name=a", "status=401")
    gw = serve(llm_config(openai_provider("a", a)))
    assert ask(gw) == 502
