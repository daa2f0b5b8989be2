"""Guardrails on what an A2A agent sends back (contract 15): messages, artifacts and status
updates, answered whole and streamed, through a real a2a-sdk agent and client.

The agent plants a secret in each place an agent puts text, beside near-misses that must come
through untouched. Every secret is assembled at run time from harmless parts, so no file of
the repository holds anything a secret scanner would take for a credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx  # the a2a-sdk client is built on httpx (not httpx2)
import pytest
import uvicorn
from a2a.client import A2ACardResolver, ClientConfig, create_client
from a2a.client.errors import A2AClientError
from a2a.helpers.proto_helpers import new_task, new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentSkill,
    Message,
    Part,
    Role,
    SendMessageRequest,
    StreamResponse,
    TaskState,
)
from a2a.utils.errors import UnsupportedOperationError
from starlette.applications import Starlette

from tests.guardrail_checks import audit_entries, guardrail_counts, guardrail_lines, logged_text
from tests.support import InProcessGateway, RawResponse, in_process_gateway, poll, raw_request

AGENT = "vault"
AGENT_PATH = f"/a2a/v1/{AGENT}"
RPC_PATH = "/a2a/jsonrpc"
GUARDRAIL = -32053

ALNUM = "A1b2C3d4E5f6G7h8J9k0"
AWS_KEY_ID = "AKIA" + "IOSFODNN7" + "EXAMPLE"
GITHUB_TOKEN = "ghp" + "_" + ALNUM + ALNUM[:16]
CARD = "4111 " + "1111 " * 2 + "1111"
SLACK_TOKEN = "xox" + "b-" + "1234567890" + "-" + "0987654321" + "-" + ALNUM
SECRETS = (AWS_KEY_ID, GITHUB_TOKEN, CARD, SLACK_TOKEN)
# Near-misses: a card number that fails the Luhn check, words that merely contain "token".
LUHN_INVALID = "4111 " + "1111 " * 2 + "1112"
TOKEN_WORDS = "a token of thanks, the tokenizer and max_tokens"

# Where the agent puts each secret.
WORKING = f"working with {AWS_KEY_ID}, not {LUHN_INVALID}"
ARTIFACT = f"found {GITHUB_TOKEN}; {TOKEN_WORDS}"
DONE = f"paid with {CARD}"
REPLY = f"here is {SLACK_TOKEN}; {TOKEN_WORDS}"
QUIET = f"nothing to hide: {LUHN_INVALID}, {TOKEN_WORDS}"


def marker(detector: str) -> str:
    return f"[REDACTED:{detector}]"


def guardrails(action: str, target: str = AGENT) -> str:
    return f"""\
apiVersion: agentgw.dev/v1alpha1
kind: GuardrailPolicy
metadata: {{name: guardrails}}
spec:
  targetRefs: [{target}]
  appliesTo: [a2a]
  secrets: {action}
"""


# -- the agent ------------------------------------------------------------------------------


class PlantingExecutor(AgentExecutor):
    """Answers "reply" with a message holding a secret, "quiet" with one holding only near-misses,
    "fail" with an error holding two; anything else with a task whose working status, artifact
    and final status each carry a secret."""

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        assert context.task_id is not None and context.context_id is not None
        asked = context.get_user_input()
        if asked == "fail":
            raise UnsupportedOperationError(f"cannot use {AWS_KEY_ID}", data={"hint": GITHUB_TOKEN})
        if asked in ("reply", "quiet"):
            text = REPLY if asked == "reply" else QUIET
            await event_queue.enqueue_event(new_text_message(text, context_id=context.context_id))
            return
        updater = TaskUpdater(event_queue, context.task_id, context.context_id)
        if context.current_task is None:
            history = [context.message] if context.message is not None else []
            task = new_task(context.task_id, context.context_id, TaskState.TASK_STATE_SUBMITTED, history=history)
            await event_queue.enqueue_event(task)
        await updater.start_work(updater.new_agent_message([Part(text=WORKING)]))
        await updater.add_artifact([Part(text=ARTIFACT)], name="findings")
        await updater.complete(updater.new_agent_message([Part(text=DONE)]))

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        raise NotImplementedError


def agent_app(base_url: str) -> Starlette:
    card = AgentCard(
        name=AGENT,
        description="Tells more than it should.",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(url=base_url + RPC_PATH, protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        capabilities=AgentCapabilities(streaming=True),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[AgentSkill(id="look", name="look", description="Look around", tags=["look"])],
    )
    handler = DefaultRequestHandler(agent_executor=PlantingExecutor(), task_store=InMemoryTaskStore(), agent_card=card)
    routes = create_agent_card_routes(card) + create_jsonrpc_routes(handler, rpc_url=RPC_PATH, enable_v0_3_compat=True)
    return Starlette(routes=routes)


@contextlib.asynccontextmanager
async def planting_agent() -> AsyncIterator[int]:
    """The agent on a port the kernel picks, its card naming that port; served from the test's loop."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(agent_app(f"http://127.0.0.1:{port}"), log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:

        async def started() -> bool:
            return server.started or task.done()

        await poll(started, timeout=10, interval=0.01)
        yield port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@contextlib.asynccontextmanager
async def guarded(tmp: Path, policies: str) -> AsyncIterator[InProcessGateway]:
    """The agent behind a gateway with these policies and an admin port."""
    async with planting_agent() as port:
        config = {
            "mcp": {"enabled": False},
            "server": {"metrics_listen": "127.0.0.1:0"},
            "a2a": {"agents": [{"name": AGENT, "backends": [{"url": f"http://127.0.0.1:{port}/"}]}]},
        }
        async with in_process_gateway(tmp, config, policies) as gw:
            yield gw


# -- calls ----------------------------------------------------------------------------------


async def call(gw: InProcessGateway, method: str, text: str, accept: str = "application/json") -> RawResponse:
    """`method` with a message of `text`: in v1.0, or in 0.3 for a 0.3 method name (with a `/`)."""
    if "/" in method:
        parts: list[dict[str, str]] = [{"kind": "text", "text": text}]
        message = {"role": "user", "kind": "message", "messageId": uuid.uuid4().hex, "parts": parts}
    else:
        message = {"role": "ROLE_USER", "messageId": uuid.uuid4().hex, "parts": [{"text": text}]}
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": {"message": message}}).encode()
    headers = [("Host", f"127.0.0.1:{gw.port}"), ("Content-Type", "application/json"), ("Accept", accept)]
    if "/" not in method:
        headers.append(("A2A-Version", "1.0"))
    return await raw_request(gw.port, "POST", AGENT_PATH, headers, body)


async def stream(gw: InProcessGateway, text: str) -> RawResponse:
    return await call(gw, "SendStreamingMessage", text, accept="text/event-stream")


async def sdk_exchange(gw: InProcessGateway, text: str, streaming: bool) -> list[StreamResponse]:
    async with httpx.AsyncClient(timeout=10.0) as http:
        card = await A2ACardResolver(http, gw.base + AGENT_PATH).get_agent_card()
        client = await create_client(card, client_config=ClientConfig(streaming=streaming, httpx_client=http))
        request = SendMessageRequest(
            message=Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=[Part(text=text)])
        )
        return [event async for event in client.send_message(request)]


def holds_no_secret(text: str) -> bool:
    return not any(secret in text for secret in SECRETS)


# -- redact ---------------------------------------------------------------------------------


async def test_redacted_task_keeps_its_shape_and_the_near_misses(tmp: Path) -> None:
    async with guarded(tmp, guardrails("redact")) as gw:
        events = await sdk_exchange(gw, "look around", streaming=False)
        raw = await call(gw, "SendMessage", "look around")

    [event] = events
    task = event.task
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    assert task.artifacts[0].parts[0].text == f"found {marker('github_token')}; {TOKEN_WORDS}"
    assert task.status.message.parts[0].text == f"paid with {marker('payment_card')}"
    working = [m.parts[0].text for m in task.history if m.role == Role.ROLE_AGENT]
    assert working == [f"working with {marker('aws_access_key_id')}, not {LUHN_INVALID}"]
    assert raw.status == 200
    assert raw.json()["id"] == 1
    assert holds_no_secret(raw.body.decode())


async def test_redacted_message_reply(tmp: Path) -> None:
    async with guarded(tmp, guardrails("redact")) as gw:
        [event] = await sdk_exchange(gw, "reply", streaming=False)

    assert event.message.parts[0].text == f"here is {marker('slack_token')}; {TOKEN_WORDS}"


async def test_redacted_stream_of_status_and_artifact_updates(tmp: Path) -> None:
    async with guarded(tmp, guardrails("redact")) as gw:
        events = await sdk_exchange(gw, "look around", streaming=True)
        raw = await stream(gw, "look around")

    statuses = [e.status_update.status for e in events if e.HasField("status_update")]
    texts = [s.message.parts[0].text for s in statuses if s.message.parts]
    assert texts == [
        f"working with {marker('aws_access_key_id')}, not {LUHN_INVALID}",
        f"paid with {marker('payment_card')}",
    ]
    [artifact] = [e.artifact_update.artifact for e in events if e.HasField("artifact_update")]
    assert artifact.parts[0].text == f"found {marker('github_token')}; {TOKEN_WORDS}"
    assert statuses[-1].state == TaskState.TASK_STATE_COMPLETED
    assert raw.status == 200
    assert all(message["id"] == 1 and "result" in message for message in raw.sse_messages())
    assert holds_no_secret(raw.body.decode())


async def test_the_0_3_generation_is_redacted_too(tmp: Path) -> None:
    async with guarded(tmp, guardrails("redact")) as gw:
        answer = await call(gw, "message/send", "look around")
        streamed = await call(gw, "message/stream", "look around", accept="text/event-stream")

    task = answer.json()["result"]
    assert task["kind"] == "task"
    assert task["artifacts"][0]["parts"][0]["text"] == f"found {marker('github_token')}; {TOKEN_WORDS}"
    kinds = [message["result"]["kind"] for message in streamed.sse_messages()]
    assert kinds == ["task", "status-update", "artifact-update", "status-update"]
    assert holds_no_secret(answer.body.decode() + streamed.body.decode())
    assert marker("payment_card") in answer.body.decode() and marker("payment_card") in streamed.body.decode()


async def test_an_agents_error_is_redacted_in_its_message_and_data(tmp: Path) -> None:
    async with guarded(tmp, guardrails("redact")) as gw:
        redacted = await call(gw, "SendMessage", "fail")
    async with guarded(tmp, guardrails("block")) as gw:
        blocked = await call(gw, "SendMessage", "fail")

    error = redacted.json()["error"]
    assert (error["code"], error["message"]) == (-32004, f"cannot use {marker('aws_access_key_id')}")
    assert error["data"][0]["metadata"] == {"hint": marker("github_token")}
    assert blocked.json()["error"]["code"] == GUARDRAIL
    assert holds_no_secret(redacted.body.decode() + blocked.body.decode())


async def test_every_redaction_is_counted_logged_without_the_secret_and_audited(
    tmp: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    async with guarded(tmp, guardrails("redact")) as gw:
        await stream(gw, "look around")
        await call(gw, "SendMessage", "reply")
        counts = await guardrail_counts(gw)
        audited = await audit_entries(gw)

    # The stream: one status update, one artifact update, the final status update.
    expected = {"aws_access_key_id": 1, "github_token": 1, "payment_card": 1, "slack_token": 1}
    assert counts == {(detector, "redact"): float(n) for detector, n in expected.items()}
    lines = guardrail_lines(caplog)
    assert sorted(line["reason"] for line in lines) == sorted(expected)
    assert {(line["decision"], line["target"]) for line in lines} == {("guardrail_redact", AGENT)}
    assert {line["method"] for line in lines} == {"SendStreamingMessage", "SendMessage"}
    assert holds_no_secret(logged_text(caplog))
    assert sorted(entry["reason"] for entry in audited) == sorted(expected)
    assert {(entry["decision"], entry["target"]) for entry in audited} == {("guardrail_redact", AGENT)}
    assert holds_no_secret(json.dumps(audited))


# -- block ----------------------------------------------------------------------------------


async def test_a_blocked_answer_becomes_a_json_rpc_error_for_the_request(tmp: Path) -> None:
    async with guarded(tmp, guardrails("block")) as gw:
        answer = await call(gw, "SendMessage", "look around")
        replied = await call(gw, "SendMessage", "reply")
        counts = await guardrail_counts(gw)

    assert answer.status == 200
    body = answer.json()
    assert (body["id"], body["error"]["code"]) == (1, GUARDRAIL)
    assert body["error"]["data"]["reason"] == "guardrail"
    assert body["error"]["data"]["detector"] in {"aws_access_key_id", "github_token", "payment_card"}
    assert "result" not in body
    assert holds_no_secret(answer.body.decode())
    assert replied.json()["error"]["data"] == {"reason": "guardrail", "detector": "slack_token"}
    assert holds_no_secret(replied.body.decode())
    assert counts[("slack_token", "block")] == 1


async def test_a_blocked_stream_event_becomes_the_error_and_ends_the_stream(tmp: Path) -> None:
    async with guarded(tmp, guardrails("block")) as gw:
        answer = await stream(gw, "look around")

    assert answer.status == 200
    *relayed, last = answer.sse_messages()
    # The task as submitted holds only the caller's words; the first status update holds a key.
    assert [message["result"]["task"]["status"]["state"] for message in relayed] == ["TASK_STATE_SUBMITTED"]
    assert (last["id"], last["error"]["code"]) == (1, GUARDRAIL)
    assert last["error"]["data"] == {"reason": "guardrail", "detector": "aws_access_key_id"}
    assert holds_no_secret(answer.body.decode())


@pytest.mark.parametrize("streaming", [False, True], ids=["whole", "streamed"])
async def test_the_sdk_client_raises_the_guardrail_error(tmp: Path, streaming: bool) -> None:
    async with guarded(tmp, guardrails("block")) as gw:
        with pytest.raises(A2AClientError) as raised:
            await sdk_exchange(gw, "look around", streaming=streaming)

    assert str(GUARDRAIL) in str(raised.value)
    assert holds_no_secret(str(raised.value))


# -- what holds no secret, warn, and no guard -----------------------------------------------


async def test_near_misses_pass_where_secrets_are_blocked(tmp: Path) -> None:
    async with guarded(tmp, guardrails("block")) as gw:
        [event] = await sdk_exchange(gw, "quiet", streaming=False)
        counts = await guardrail_counts(gw)

    assert event.message.parts[0].text == QUIET
    assert counts == {}


async def test_events_without_a_secret_keep_the_agents_own_data(tmp: Path) -> None:
    async with guarded(tmp, guardrails("redact")) as gw:
        answer = await stream(gw, "look around")

    events = [line for line in answer.body.decode().splitlines() if line.startswith("data:")]
    # The a2a-sdk writes its events with a space after each separator; the gateway's own
    # serialisation, of the events it redacted, has none.
    submitted, *updates = events
    assert '"id": 1' in submitted and "TASK_STATE_SUBMITTED" in submitted
    assert [('"id":1' in event, "[REDACTED:" in event) for event in updates] == [(True, True)] * 3


# -- warn, and no guard ---------------------------------------------------------------------


async def test_warn_relays_everything_as_it_came_and_counts_it(tmp: Path) -> None:
    async with guarded(tmp, guardrails("warn")) as gw:
        [event] = await sdk_exchange(gw, "look around", streaming=False)
        streamed = await stream(gw, "look around")
        counts = await guardrail_counts(gw)

    assert event.task.artifacts[0].parts[0].text == ARTIFACT
    assert event.task.status.message.parts[0].text == DONE
    assert all(secret in streamed.body.decode() for secret in (AWS_KEY_ID, GITHUB_TOKEN, CARD))
    assert {action for _, action in counts} == {"warn"}
    assert counts[("github_token", "warn")] == 2


async def test_a_policy_for_another_agent_leaves_this_one_alone(tmp: Path) -> None:
    async with guarded(tmp, guardrails("block", target="another-agent")) as gw:
        answer = await call(gw, "SendMessage", "look around")
        streamed = await stream(gw, "look around")
        counts = await guardrail_counts(gw)

    assert "result" in answer.json()
    assert all(secret in answer.body.decode() for secret in (AWS_KEY_ID, GITHUB_TOKEN, CARD))
    assert all(secret in streamed.body.decode() for secret in (AWS_KEY_ID, GITHUB_TOKEN, CARD))
    assert counts == {}
