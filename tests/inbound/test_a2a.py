"""A2A through the gateway (contract 8): two real a2a-sdk agent replicas behind it.

The example agent completes every task with the artifact "<replica>: <user text>",
so each answer names the replica that holds the task.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx  # the a2a-sdk client is built on httpx (not httpx2)
import jwt
import pytest
from a2a.client import A2ACardResolver, ClientConfig, create_client
from a2a.types.a2a_pb2 import Message, Part, Role, SendMessageRequest, StreamResponse, TaskState

from tests.inbound.conftest import REPLICAS, a2a_agent
from tests.support import (
    InProcessGateway,
    Process,
    RawResponse,
    closed_port,
    gateway_in_thread,
    in_process_gateway,
    poll,
    raw_request,
    start_all,
)

AGENT_PATH = "/a2a/v1/planner"
CARD_PATH = "/.well-known/agent-card.json"
LEGACY_CARD_PATH = "/.well-known/agent.json"
TASK_NOT_FOUND = -32001
POLICY_DENIED = -32051
PARSE_ERROR = -32700
INVALID_REQUEST = -32600

ISSUER = "https://issuer.a2a.test"
AUDIENCE = "agentgw-a2a"
SECRET = "a2a-test-secret-that-is-comfortably-longer-than-32-bytes"
SCOPE = "agents:planner"
AUTH_POLICIES = f"""\
apiVersion: agentgw.dev/v1alpha1
kind: SessionAuthPolicy
metadata: {{name: auth}}
spec:
  authType: JWT
  jwtValidation: {{issuer: "{ISSUER}", audience: {AUDIENCE}, secretEnv: TEST_JWT_SECRET, algorithms: [HS256]}}
---
apiVersion: agentgw.dev/v1alpha1
kind: AgentPolicy
metadata: {{name: agents}}
spec:
  defaultAction: deny
  allowedAgents:
    - name: planner
      allowedScopes: ["{SCOPE}"]
  denyList: ["CancelTask"]
"""


def a2a_config(*ports: int, **extra: Any) -> dict[str, Any]:
    backends = [{"url": f"http://127.0.0.1:{port}/"} for port in ports]
    return {"a2a": {"agents": [{"name": "planner", "backends": backends}]}, **extra}


def token(subject: str, scope: str = SCOPE) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": now, "exp": now + 300, "scope": scope}
    return jwt.encode(claims, SECRET, algorithm="HS256")


# -- raw JSON-RPC, both generations ----------------------------------------------


def v1_message(text: str, **ids: str) -> dict[str, Any]:
    return {"role": "ROLE_USER", "messageId": uuid.uuid4().hex, "parts": [{"text": text}], **ids}


def v03_message(text: str) -> dict[str, Any]:
    return {"role": "user", "kind": "message", "messageId": uuid.uuid4().hex, "parts": [{"kind": "text", "text": text}]}


def rpc(method: str, params: dict[str, Any], request_id: int = 1) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}).encode()


async def call(
    gw: InProcessGateway,
    method: str,
    params: dict[str, Any],
    bearer: str | None = None,
    version: str | None = "1.0",
    accept: str = "application/json",
) -> RawResponse:
    headers = [("Host", f"127.0.0.1:{gw.port}"), ("Content-Type", "application/json"), ("Accept", accept)]
    if version is not None:
        headers.append(("A2A-Version", version))
    if bearer is not None:
        headers.append(("Authorization", f"Bearer {bearer}"))
    return await raw_request(gw.port, "POST", AGENT_PATH, headers, rpc(method, params))


def result(response: RawResponse) -> dict[str, Any]:
    assert response.status == 200, response.body
    answer = response.json()
    assert "result" in answer, answer
    return dict(answer["result"])


def error_code(response: RawResponse) -> int:
    answer = response.json()
    assert "error" in answer, answer
    return int(answer["error"]["code"])


def rpc_error(response: RawResponse) -> int:
    """The code of the JSON-RPC error answering `call`'s request (id 1)."""
    assert response.json()["id"] == 1, response.body
    return error_code(response)


def artifact_text(task: dict[str, Any]) -> str:
    """The echoed text of a task in either generation's JSON shape."""
    return str(task["artifacts"][0]["parts"][0]["text"])


async def send(gw: InProcessGateway, text: str, bearer: str | None = None, **ids: str) -> dict[str, Any]:
    """A blocking v1 SendMessage; the task it made."""
    task = result(await call(gw, "SendMessage", {"message": v1_message(text, **ids)}, bearer))["task"]
    assert task["status"]["state"] == "TASK_STATE_COMPLETED", task
    return dict(task)


async def get_task(gw: InProcessGateway, task_id: str, bearer: str | None = None) -> dict[str, Any]:
    return result(await call(gw, "GetTask", {"id": task_id}, bearer))


def replica_of(task: dict[str, Any]) -> str:
    return artifact_text(task).split(":")[0]


@pytest.fixture(scope="module")
def gw(agents: list[Process], tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    with gateway_in_thread(tmp_path_factory.mktemp("a2a"), a2a_config(*(a.port for a in agents))) as running:
        yield running


# -- (1) the real a2a-sdk client, through the gateway -----------------------------


async def sdk_exchange(gw: InProcessGateway, text: str, streaming: bool) -> list[StreamResponse]:
    async with httpx.AsyncClient(timeout=10.0) as http:
        card = await A2ACardResolver(http, gw.base + AGENT_PATH).get_agent_card()
        client = await create_client(card, client_config=ClientConfig(streaming=streaming, httpx_client=http))
        request = SendMessageRequest(
            message=Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=[Part(text=text)])
        )
        return [event async for event in client.send_message(request)]


async def test_sdk_client_resolves_the_card_through_the_gateway_and_sends_a_blocking_message(
    gw: InProcessGateway,
) -> None:
    events = await sdk_exchange(gw, "plan a trip", streaming=False)

    assert [e.WhichOneof("payload") for e in events] == ["task"]
    task = events[0].task
    assert task.status.state == TaskState.TASK_STATE_COMPLETED
    replica, _, echoed = task.artifacts[0].parts[0].text.partition(": ")
    assert (replica in REPLICAS, echoed) == (True, "plan a trip")


async def test_sdk_client_streams_a_message_through_the_gateway(gw: InProcessGateway) -> None:
    events = await sdk_exchange(gw, "stream it", streaming=True)

    kinds = [e.WhichOneof("payload") for e in events]
    assert "artifact_update" in kinds, kinds
    texts = [e.artifact_update.artifact.parts[0].text for e in events if e.HasField("artifact_update")]
    replica, _, echoed = texts[0].partition(": ")
    assert (replica in REPLICAS, echoed) == (True, "stream it")
    assert events[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED


# -- (2) the card names the gateway, never a backend -------------------------------


@pytest.mark.parametrize("path", [CARD_PATH, LEGACY_CARD_PATH])
async def test_card_points_at_the_gateway_and_names_no_backend(
    gw: InProcessGateway, agents: list[Process], path: str
) -> None:
    response = await raw_request(gw.port, "GET", AGENT_PATH + path, [("Host", f"127.0.0.1:{gw.port}")])

    assert response.status == 200, response.body
    card = response.json()
    assert [i["url"] for i in card["supportedInterfaces"]] == [gw.base + AGENT_PATH]
    served = response.body.decode()
    for agent in agents:
        assert str(agent.port) not in served
    assert "/a2a/jsonrpc" not in served


# -- (3) tasks are found where they were made ---------------------------------------


async def test_every_task_is_found_on_its_replica_every_time(gw: InProcessGateway) -> None:
    tasks = [await send(gw, f"task {n}") for n in range(6)]

    assert {replica_of(t) for t in tasks} == set(REPLICAS)  # both replicas hold tasks
    for task in tasks:
        for _ in range(4):
            found = await get_task(gw, task["id"])
            assert found["id"] == task["id"]
            assert artifact_text(found) == artifact_text(task)


async def test_streamed_tasks_are_found_on_their_replica(gw: InProcessGateway) -> None:
    made: dict[str, str] = {}
    for n in range(4):
        response = await call(
            gw, "SendStreamingMessage", {"message": v1_message(f"streamed {n}")}, accept="text/event-stream"
        )
        assert response.status == 200, response.body
        events = [m["result"] for m in response.sse_messages()]
        task_id = events[0]["task"]["id"]
        updates = [e["artifactUpdate"] for e in events if "artifactUpdate" in e]
        made[task_id] = updates[0]["artifact"]["parts"][0]["text"]

    assert {text.split(":")[0] for text in made.values()} == set(REPLICAS)
    for task_id, text in made.items():
        for _ in range(3):
            assert artifact_text(await get_task(gw, task_id)) == text


async def test_follow_ups_in_a_context_go_to_the_replica_holding_it(gw: InProcessGateway) -> None:
    first = await send(gw, "opening")
    follow_ups = [await send(gw, f"follow-up {n}", contextId=first["contextId"]) for n in range(4)]

    assert {replica_of(t) for t in follow_ups} == {replica_of(first)}
    assert {t["contextId"] for t in follow_ups} == {first["contextId"]}


async def test_a_task_the_gateway_never_made_is_not_found(gw: InProcessGateway) -> None:
    response = await call(gw, "GetTask", {"id": str(uuid.uuid4())})

    assert response.status == 200
    assert rpc_error(response) == TASK_NOT_FOUND


async def test_a_task_made_through_one_gateway_is_found_through_another(
    tmp: Path, redis_url: str, agents: list[Process]
) -> None:
    store = {"type": "redis", "url": redis_url, "key_prefix": f"a2a{time.monotonic_ns()}:"}
    config = a2a_config(*(a.port for a in agents), session_store=store)
    async with (
        in_process_gateway(tmp, config, name="first") as first,
        in_process_gateway(tmp, config, name="second") as second,
    ):
        tasks = [await send(first, f"shared {n}") for n in range(4)]
        assert {replica_of(t) for t in tasks} == set(REPLICAS)
        for task in tasks:
            for gw in (second, first, second):
                assert artifact_text(await get_task(gw, task["id"])) == artifact_text(task)


async def test_tasks_made_concurrently_are_each_found(gw: InProcessGateway) -> None:
    tasks = await asyncio.gather(*(send(gw, f"at once {n}") for n in range(10)))

    assert {replica_of(t) for t in tasks} == set(REPLICAS)
    found = await asyncio.gather(*(get_task(gw, t["id"]) for t in tasks))
    assert [artifact_text(f) for f in found] == [artifact_text(t) for t in tasks]


# -- (4) JWT and AgentPolicy ---------------------------------------------------------


@pytest.fixture(scope="module")
def secured(agents: list[Process], tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    tmp = tmp_path_factory.mktemp("a2a-secured")
    config = a2a_config(*(a.port for a in agents))
    with gateway_in_thread(tmp, config, AUTH_POLICIES, env={"TEST_JWT_SECRET": SECRET}, name="secured") as running:
        yield running


async def test_another_subjects_task_does_not_exist_for_them(secured: InProcessGateway) -> None:
    alice, mallory = token("alice"), token("mallory")
    tasks = [await send(secured, f"alice {n}", alice) for n in range(2)]  # one on each replica

    for task in tasks:
        stolen = await call(secured, "GetTask", {"id": task["id"]}, mallory)
        assert stolen.status == 200
        assert rpc_error(stolen) == TASK_NOT_FOUND
        for _ in range(2):
            assert artifact_text(await get_task(secured, task["id"], alice)) == artifact_text(task)


async def test_ownership_holds_across_gateways_sharing_redis(tmp: Path, redis_url: str, agents: list[Process]) -> None:
    store = {"type": "redis", "url": redis_url, "key_prefix": f"a2a{time.monotonic_ns()}:"}
    config = a2a_config(*(a.port for a in agents), session_store=store)
    env = {"TEST_JWT_SECRET": SECRET}
    async with (
        in_process_gateway(tmp, config, AUTH_POLICIES, env=env, name="first") as first,
        in_process_gateway(tmp, config, AUTH_POLICIES, env=env, name="second") as second,
    ):
        task = await send(first, "across", token("alice"))

        assert rpc_error(await call(second, "GetTask", {"id": task["id"]}, token("mallory"))) == TASK_NOT_FOUND
        assert artifact_text(await get_task(second, task["id"], token("alice"))) == artifact_text(task)


@pytest.mark.parametrize(
    ("method", "version", "params"),
    [
        ("tasks/get", None, lambda task: {"id": task}),
        ("SubscribeToTask", "1.0", lambda task: {"id": task}),
        ("tasks/resubscribe", None, lambda task: {"id": task}),
        ("GetTaskPushNotificationConfig", "1.0", lambda task: {"taskId": task, "id": "config"}),
        ("ListTaskPushNotificationConfigs", "1.0", lambda task: {"taskId": task}),
        ("tasks/pushNotificationConfig/get", None, lambda task: {"id": task}),
    ],
)
async def test_every_method_naming_another_subjects_task_finds_nothing(
    secured: InProcessGateway, method: str, version: str | None, params: Any
) -> None:
    task = await send(secured, "private", token("alice"))

    response = await call(secured, method, params(task["id"]), token("mallory"), version=version)

    assert response.status == 200
    assert rpc_error(response) == TASK_NOT_FOUND


async def test_a_follow_up_into_another_subjects_task_is_refused(secured: InProcessGateway) -> None:
    task = await send(secured, "mine", token("alice"))
    message = {"message": v1_message("hijack", taskId=task["id"], contextId=task["contextId"])}

    response = await call(secured, "SendMessage", message, token("mallory"))

    assert rpc_error(response) == TASK_NOT_FOUND


async def test_a_message_into_another_subjects_context_is_refused(secured: InProcessGateway) -> None:
    task = await send(secured, "my context", token("alice"))

    response = await call(
        secured, "SendMessage", {"message": v1_message("join", contextId=task["contextId"])}, token("mallory")
    )

    assert rpc_error(response) == TASK_NOT_FOUND
    follow_up = await send(secured, "still mine", token("alice"), contextId=task["contextId"])
    assert replica_of(follow_up) == replica_of(task)


async def test_list_tasks_shows_only_the_callers_tasks(secured: InProcessGateway) -> None:
    alice, bob = token("alice"), token("bob")
    mine = {(await send(secured, f"alice list {n}", alice))["id"] for n in range(2)}
    theirs = {(await send(secured, f"bob list {n}", bob))["id"] for n in range(2)}

    listed: set[str] = set()
    for _ in range(2):  # ListTasks reaches one replica at a time, in turn
        listed |= {t["id"] for t in result(await call(secured, "ListTasks", {}, alice)).get("tasks", [])}

    assert mine <= listed
    assert not (theirs & listed)


async def test_no_token_is_401(secured: InProcessGateway) -> None:
    response = await call(secured, "SendMessage", {"message": v1_message("anonymous")})

    assert response.status == 401
    assert (response.header("www-authenticate") or "").startswith("Bearer")


async def test_a_token_without_the_agent_scope_is_403_missing_scope(secured: InProcessGateway) -> None:
    response = await call(secured, "SendMessage", {"message": v1_message("no scope")}, token("alice", "other"))

    assert response.status == 403
    assert rpc_error(response) == POLICY_DENIED
    assert response.json()["error"]["data"]["reason"] == "missing_scope"
    assert "insufficient_scope" in (response.header("www-authenticate") or "")


@pytest.mark.parametrize(
    ("method", "version"),
    [("CancelTask", "1.0"), ("tasks/cancel", None), ("canceltask", "1.0"), ("Tasks/Cancel", None)],
)
async def test_a_denied_method_is_refused_in_both_generations(
    secured: InProcessGateway, method: str, version: str | None
) -> None:
    alice = token("alice")
    task = await send(secured, "cancel me", alice)

    response = await call(secured, method, {"id": task["id"]}, alice, version=version)

    assert response.status == 200
    assert rpc_error(response) == POLICY_DENIED
    assert response.json()["error"]["data"]["reason"] == "deny_list"


async def test_sdk_client_with_a_token_works_through_the_secured_gateway(secured: InProcessGateway) -> None:
    headers = {"Authorization": f"Bearer {token('alice')}"}
    async with httpx.AsyncClient(timeout=10.0, headers=headers) as http:
        card = await A2ACardResolver(http, secured.base + AGENT_PATH).get_agent_card()
        assert [i.url for i in card.supported_interfaces] == [secured.base + AGENT_PATH]
        client = await create_client(card, client_config=ClientConfig(streaming=True, httpx_client=http))
        request = SendMessageRequest(
            message=Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=[Part(text="with a token")])
        )
        events = [event async for event in client.send_message(request)]

    texts = [e.artifact_update.artifact.parts[0].text for e in events if e.HasField("artifact_update")]
    assert texts[0].split(": ", 1)[1] == "with a token"


async def test_the_card_needs_a_token_too(secured: InProcessGateway) -> None:
    response = await raw_request(secured.port, "GET", AGENT_PATH + CARD_PATH, [("Host", f"127.0.0.1:{secured.port}")])

    assert response.status == 401


# -- (5) a 0.3 client ----------------------------------------------------------------


async def test_a_v03_client_sends_and_gets_tasks_without_the_version_header(gw: InProcessGateway) -> None:
    made = []
    for n in range(2):
        message = v03_message(f"old client {n}")
        task = result(await call(gw, "message/send", {"message": message}, version=None))
        assert (task["kind"], task["status"]["state"]) == ("task", "completed")
        assert artifact_text(task).endswith(f": old client {n}")
        made.append(task)

    assert {replica_of(t) for t in made} == set(REPLICAS)
    for task in made:
        found = result(await call(gw, "tasks/get", {"id": task["id"]}, version=None))
        assert artifact_text(found) == artifact_text(task)


async def test_a_v03_client_streams_and_the_streamed_task_is_found(gw: InProcessGateway) -> None:
    made: dict[str, str] = {}
    for n in range(2):
        message = v03_message(f"old stream {n}")
        response = await call(gw, "message/stream", {"message": message}, version=None, accept="text/event-stream")
        assert response.status == 200, response.body
        events = [m["result"] for m in response.sse_messages()]
        assert events[-1]["kind"] == "status-update" and events[-1]["status"]["state"] == "completed"
        artifacts = [e["artifact"] for e in events if e.get("kind") == "artifact-update"]
        made[events[0]["id"]] = artifacts[0]["parts"][0]["text"]

    assert {text.split(":")[0] for text in made.values()} == set(REPLICAS)
    for task_id, text in made.items():
        found = result(await call(gw, "tasks/get", {"id": task_id}, version=None))
        assert artifact_text(found) == text


# -- (6) agents that are down ------------------------------------------------------


@pytest.fixture
def replicas(tmp: Path) -> Iterator[list[Process]]:
    """Replicas of this test's own, to stop and start again."""
    started = start_all(*(a2a_agent(name, tmp / f"{name}.log") for name in REPLICAS))
    yield started
    for replica in started:
        replica.stop()


async def test_agents_down_answer_a_json_rpc_error_quickly_and_service_resumes(
    tmp: Path, replicas: list[Process]
) -> None:
    async with in_process_gateway(tmp, a2a_config(*(r.port for r in replicas))) as running:
        task = await send(running, "before")
        for replica in replicas:
            replica.stop()

        started = time.monotonic()
        down = await call(running, "SendMessage", {"message": v1_message("nobody home")})
        pinned = await call(running, "GetTask", {"id": task["id"]})
        assert time.monotonic() - started < 10.0
        for response in (down, pinned):
            assert response.status in (502, 503, 504), response.body
            assert rpc_error(response) < 0

        start_all(*replicas)
        resumed = [await send(running, f"after {n}") for n in range(2)]
        assert [artifact_text(t).split(": ", 1)[1] for t in resumed] == ["after 0", "after 1"]


async def test_a_gateway_started_before_its_agents_answers_a_json_rpc_error(tmp: Path) -> None:
    with closed_port() as first, closed_port() as second:
        async with in_process_gateway(tmp, a2a_config(first, second)) as running:
            started = time.monotonic()
            response = await call(running, "SendMessage", {"message": v1_message("anyone?")})

            assert time.monotonic() - started < 10.0
            assert response.status in (502, 503, 504), response.body
            assert rpc_error(response) < 0
            host = [("Host", f"127.0.0.1:{running.port}")]
            card = await raw_request(running.port, "GET", AGENT_PATH + CARD_PATH, host)
            assert card.status in (502, 503, 504)


async def test_with_one_agent_down_new_tasks_go_to_the_other(tmp: Path, replicas: list[Process]) -> None:
    async with in_process_gateway(tmp, a2a_config(*(r.port for r in replicas))) as running:
        before = {replica_of(t): t for t in [await send(running, f"before {n}") for n in range(2)]}
        assert set(before) == set(REPLICAS)
        replicas[0].stop()

        after = [await send(running, f"after {n}") for n in range(4)]

        assert {replica_of(t) for t in after} == {REPLICAS[1]}
        for task in [*after, before[REPLICAS[1]]]:
            assert artifact_text(await get_task(running, task["id"])) == artifact_text(task)
        # A task on the stopped replica is not looked for elsewhere: the agent is unavailable.
        lost = await call(running, "GetTask", {"id": before[REPLICAS[0]]["id"]})
        assert lost.status in (502, 503, 504), lost.body


async def test_a_replica_that_comes_back_gets_new_tasks_again(tmp: Path, replicas: list[Process]) -> None:
    async with in_process_gateway(tmp, a2a_config(*(r.port for r in replicas))) as running:
        replicas[1].stop()
        assert {replica_of(await send(running, f"while down {n}")) for n in range(2)} == {REPLICAS[0]}
        replicas[1].start()

        async def lands_on_the_returned_replica() -> bool:
            return replica_of(await send(running, "anyone back?")) == REPLICAS[1]

        # Ten times the interval at which MCP backends are health-checked.
        await poll(lands_on_the_returned_replica, timeout=20.0, interval=0.5)


# -- (7) bad input -------------------------------------------------------------------

JSON = "application/json"
SEND = rpc("SendMessage", {"message": v1_message("x")})
BAD_INPUT = {
    "not-json": (b'{"jsonrpc": "2.0", "method": ', JSON, 400, PARSE_ERROR),
    "bom": (b"\xef\xbb\xbf" + SEND, JSON, 400, PARSE_ERROR),
    "batch": (b"[" + rpc("GetTask", {"id": "a"}) + b"," + SEND + b"]", JSON, 400, INVALID_REQUEST),
    "batch-of-one": (b"[" + SEND + b"]", JSON, 400, INVALID_REQUEST),
    "duplicate-keys": (b'{"jsonrpc":"2.0","id":1,"id":2,"method":"GetTask","params":{}}', JSON, 400, INVALID_REQUEST),
    "params-not-object": (b'{"jsonrpc":"2.0","id":1,"method":"GetTask","params":["a"]}', JSON, 400, INVALID_REQUEST),
    "bad-id": (b'{"jsonrpc":"2.0","id":{},"method":"GetTask","params":{}}', JSON, 400, INVALID_REQUEST),
    "content-type": (SEND, "text/plain", 415, INVALID_REQUEST),
}


@pytest.mark.parametrize(("body", "content_type", "status", "code"), BAD_INPUT.values(), ids=BAD_INPUT.keys())
async def test_bad_input_is_refused_with_its_code_and_the_gateway_still_serves(
    gw: InProcessGateway, body: bytes, content_type: str, status: int, code: int
) -> None:
    headers = [("Host", f"127.0.0.1:{gw.port}"), ("Content-Type", content_type), ("A2A-Version", "1.0")]

    response = await raw_request(gw.port, "POST", AGENT_PATH, headers, body)

    assert response.status == status, response.body
    assert error_code(response) == code
    assert artifact_text(await send(gw, "still here")).endswith(": still here")


async def test_an_unknown_agent_is_404(gw: InProcessGateway) -> None:
    headers = [("Host", f"127.0.0.1:{gw.port}"), ("Content-Type", JSON)]

    unknown = await raw_request(gw.port, "POST", "/a2a/v1/nobody", headers, rpc("GetTask", {"id": "x"}))

    assert unknown.status == 404
