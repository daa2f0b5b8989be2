"""Retries with backoff within a deadline: the last route of a chain is tried again (contract 9, issue 6)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import openai
import pytest

from tests.stub_providers import StubProvider, client, llm_config, openai_provider
from tests.support import InProcessGateway

QUESTION = [{"role": "user", "content": "again please"}]


def retry(attempts: int, backoff: str = "200ms", deadline: str = "30s") -> dict[str, Any]:
    return {"retry": {"attempts": attempts, "backoff": backoff, "deadline": deadline}}


def ask(gw: InProcessGateway, model: str = "a/x", stream: bool = False) -> str:
    sdk = client(gw)
    if not stream:
        return sdk.chat.completions.create(model=model, messages=QUESTION).choices[0].message.content or ""
    return "".join(
        c.choices[0].delta.content or ""
        for c in sdk.chat.completions.create(model=model, messages=QUESTION, stream=True)
        if c.choices
    )


def gaps(requests: list[dict[str, Any]]) -> list[float]:
    times = [r["at"] for r in requests]
    return [later - earlier for earlier, later in itertools.pairwise(times)]


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize("status", [500, 503, 429])
def test_a_passing_failure_is_retried_after_a_backoff(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider], status: int, stream: bool
) -> None:
    a = stub("name=a", f"status={status}", "failfirst=1")
    gw = serve(llm_config(openai_provider("a", a), **retry(attempts=2, backoff="300ms")))

    assert ask(gw, stream=stream) == "a says again please"

    assert len(a.chat_requests()) == 2
    assert gaps(a.chat_requests())[0] >= 0.3 * 0.8  # the backoff, less its jitter


def test_backoff_doubles_between_retries(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    a = stub("name=a", "failfirst=3")
    gw = serve(llm_config(openai_provider("a", a), **retry(attempts=4, backoff="200ms")))

    assert ask(gw) == "a says again please"

    first, second, third = gaps(a.chat_requests())
    assert first >= 0.2 * 0.8 and second >= 0.4 * 0.8 and third >= 0.8 * 0.8
    assert second > first and third > second


def test_no_retry_starts_after_the_deadline(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    a = stub("name=a", "status=503")
    gw = serve(llm_config(openai_provider("a", a), **retry(attempts=10, backoff="200ms", deadline="1s")))

    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as failed:
        ask(gw)
    elapsed = time.monotonic() - started

    assert failed.value.status_code == 503
    # Tries at 0s, 0.16-0.24s and 0.48-0.72s (backoff 200ms doubling, jitter ±20%);
    # the next would start after 1.12s, past the deadline.
    assert len(a.chat_requests()) == 3
    assert elapsed < 2.0


def test_a_provider_that_timed_out_is_not_tried_again(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    a = stub("name=a", "delay=3")
    gw = serve(llm_config(openai_provider("a", a, timeout="500ms"), **retry(attempts=3, backoff="100ms")))

    with pytest.raises(openai.APIStatusError) as failed:
        ask(gw)

    assert failed.value.status_code == 503
    assert len(a.chat_requests()) == 1


def test_a_refused_request_is_not_retried(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    a = stub("name=a", "status=400")
    gw = serve(llm_config(openai_provider("a", a), **retry(attempts=3, backoff="100ms")))

    with pytest.raises(openai.APIStatusError) as failed:
        ask(gw)

    assert failed.value.status_code == 400
    assert len(a.chat_requests()) == 1


def test_with_a_fallback_left_a_failure_moves_on_at_once(
    serve: Callable[..., InProcessGateway], stub: Callable[..., StubProvider]
) -> None:
    a, b = stub("name=a", "status=503"), stub("name=b", "status=503", "failfirst=1")
    config = llm_config(
        openai_provider("a", a), openai_provider("b", b), models={"smart": ["a/x", "b/y"]}, **retry(attempts=3)
    )
    gw = serve(config)

    assert ask(gw, model="smart") == "b says again please"

    assert len(a.chat_requests()) == 1  # the fallback is the better retry
    assert len(b.chat_requests()) == 2  # the last route: retried
