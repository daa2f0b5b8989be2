"""A2A agents and callers that lie (contract 11): ownership, cards, webhooks and answers.

Lying agents are raw loopback servers that answer what each test scripts and
record every request; sinks record every connection. Each attack asserts both
what the client saw and what reached the agent or the sink.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from agentgw.inbound.a2a_webhooks import is_public_address, webhook_allowed
from tests.inbound.lying_agent import LyingAgent, Received, Reply, Servers, Sink, answer, honest, task
from tests.support import InProcessGateway, Process, RawResponse, gateway_in_thread, poll, raw_request

TASK_NOT_FOUND = -32001
POLICY_DENIED = -32051
BAD_BACKEND_ANSWER = -32052
ISSUER = "https://issuer.hostile.test"
AUDIENCE = "agentgw-a2a"
SECRET = "hostile-agents-secret-comfortably-longer-than-32-bytes"
SCOPE = "agents:use"
POLICIES = f"""\
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
    - name: "*"
      allowedScopes: ["{SCOPE}"]
"""
ALLOWED_WEBHOOK_HOST = "localhost"


def token(subject: str) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": now, "exp": now + 300, "scope": SCOPE}
    return jwt.encode(claims, SECRET, algorithm="HS256")


ALICE, MALLORY = token("alice"), token("mallory")


def v1_message(text: str, **ids: str) -> dict[str, Any]:
    return {"role": "ROLE_USER", "messageId": uuid.uuid4().hex, "parts": [{"text": text}], **ids}


async def call(
    gw: InProcessGateway,
    agent: str,
    method: str,
    params: dict[str, Any],
    bearer: str = ALICE,
    accept: str = "application/json",
) -> RawResponse:
    headers = [
        ("Host", f"127.0.0.1:{gw.port}"),
        ("Content-Type", "application/json"),
        ("Accept", accept),
        ("Authorization", f"Bearer {bearer}"),
    ]
    if "/" not in method:  # a v1 name; 0.3 clients send no version
        headers.append(("A2A-Version", "1.0"))
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    return await raw_request(gw.port, "POST", f"/a2a/v1/{agent}", headers, body)


async def card_of(gw: InProcessGateway, agent: str) -> RawResponse:
    headers = [("Host", f"127.0.0.1:{gw.port}"), ("Authorization", f"Bearer {ALICE}")]
    return await raw_request(gw.port, "GET", f"/a2a/v1/{agent}/.well-known/agent-card.json", headers)


def error_of(response: RawResponse) -> tuple[int, int, Any]:
    """Status, JSON-RPC code and `data.reason` of an error answer."""
    error = response.json()["error"]
    return response.status, error["code"], (error.get("data") or {}).get("reason")


def result(response: RawResponse) -> dict[str, Any]:
    assert response.status == 200, response.body
    return dict(response.json()["result"])


async def refusals(metrics_port: int, target: str, reason: str) -> float:
    """The gateway's `agentgw_backend_refusals_total` for one target and reason."""
    response = await raw_request(metrics_port, "GET", "/metrics", [("Host", f"127.0.0.1:{metrics_port}")])
    pattern = rf'agentgw_backend_refusals_total\{{(?=[^}}]*target="{target}")(?=[^}}]*reason="{reason}")[^}}]*\}} (\S+)'
    found = re.search(pattern, response.body.decode())
    return float(found.group(1)) if found else 0.0


# -- the servers and the gateway of this module ----------------------------------------


class Hostile:
    """The gateway under test and everything behind it."""

    def __init__(self, gw: InProcessGateway, metrics_port: int, agents: dict[str, LyingAgent], sink: Sink) -> None:
        self.gw, self.metrics_port, self.agents, self.sink = gw, metrics_port, agents, sink

    async def refusals(self, target: str, reason: str) -> float:
        return await refusals(self.metrics_port, target, reason)


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    running = Servers()
    yield running
    running.close()


@pytest.fixture(scope="module")
def pusher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Process]:
    log = tmp_path_factory.mktemp("pusher") / "pusher.log"
    agent = Process(
        lambda port: [sys.executable, str(Path(__file__).parent / "push_agent.py"), "--port", str(port)], log=log
    )
    yield agent.start()
    agent.stop()


@pytest.fixture(scope="module")
def hostile(servers: Servers, pusher: Process, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    sink = servers.sink()
    agents = {name: servers.agent(name) for name in ("liar", "redirector", "badcard", "urls")}
    decoy = f"http://127.0.0.1:{sink.port}/a2a/jsonrpc"
    agents["redirector"].card_body = json.dumps(
        {
            "name": "redirector",
            "url": decoy,
            "supportedInterfaces": [{"url": decoy, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}],
        }
    ).encode()
    targets = [{"name": name, "backends": [{"url": agent.url + "/"}]} for name, agent in agents.items()]
    targets.append({"name": "pusher", "backends": [{"url": f"http://127.0.0.1:{pusher.port}/"}]})
    config = {
        "a2a": {"agents": targets, "push_webhook_hosts": [ALLOWED_WEBHOOK_HOST]},
        "server": {"metrics_listen": "127.0.0.1:0"},
    }
    tmp = tmp_path_factory.mktemp("hostile")
    with gateway_in_thread(tmp, config, POLICIES, env={"TEST_JWT_SECRET": SECRET}, name="hostile") as running:
        assert running.admin_port is not None
        yield Hostile(running, running.admin_port, agents, sink)


@pytest.fixture
def liar(hostile: Hostile) -> Iterator[LyingAgent]:
    """The lying agent, honest until a test scripts it otherwise, and honest again after."""
    agent = hostile.agents["liar"]
    yield agent
    agent.script = honest


# -- (1) ownership ids come only from the fields each method defines ----------------------

ATTACKS = {
    "GetTask-with-a-message": ("GetTask", lambda victim, own: {"id": victim, "message": v1_message("x", **own)}),
    "CancelTask-with-a-message": ("CancelTask", lambda victim, own: {"id": victim, "message": v1_message("x", **own)}),
    "SubscribeToTask-with-a-message": (
        "SubscribeToTask",
        lambda victim, own: {"id": victim, "message": v1_message("x", **own)},
    ),
    "tasks/get-with-a-message": ("tasks/get", lambda victim, own: {"id": victim, "message": v1_message("x", **own)}),
    "tasks/cancel-with-a-message": (
        "tasks/cancel",
        lambda victim, own: {"id": victim, "message": v1_message("x", **own)},
    ),
    "GetTaskPushNotificationConfig-with-own-id": (
        "GetTaskPushNotificationConfig",
        lambda victim, own: {"taskId": victim, "id": own["taskId"], "message": v1_message("x", **own)},
    ),
    "GetTaskPushNotificationConfig-snake-case": (
        "GetTaskPushNotificationConfig",
        lambda victim, own: {"task_id": victim, "id": "config"},
    ),
    "ListTaskPushNotificationConfigs-snake-case": (
        "ListTaskPushNotificationConfigs",
        lambda victim, own: {"task_id": victim},
    ),
    "DeleteTaskPushNotificationConfig": (
        "DeleteTaskPushNotificationConfig",
        lambda victim, own: {"taskId": victim, "id": "config", "message": v1_message("x", **own)},
    ),
    "tasks/pushNotificationConfig/get-with-own-taskId": (
        "tasks/pushNotificationConfig/get",
        lambda victim, own: {"id": victim, "taskId": own["taskId"]},
    ),
    "SendMessage-snake-case-task": (
        "SendMessage",
        lambda victim, own: {"message": {**v1_message("x"), "task_id": victim}},
    ),
    "SendMessage-snake-case-context": (
        "SendMessage",
        lambda victim, own: {"message": {**v1_message("x"), "context_id": "ctx-of-" + victim}},
    ),
}


@pytest.mark.parametrize(("method", "params"), ATTACKS.values(), ids=ATTACKS.keys())
async def test_another_subjects_task_is_unreachable_whatever_else_params_carry(
    hostile: Hostile, liar: LyingAgent, method: str, params: Any
) -> None:
    victim = uuid.uuid4().hex
    liar.script = lambda request: answer(request, {"task": task(victim, "ctx-of-" + victim)})
    result(await call(hostile.gw, "liar", "SendMessage", {"message": v1_message("alice's")}, ALICE))
    liar.script = lambda request: answer(request, {"task": task(uuid.uuid4().hex, uuid.uuid4().hex)})
    own_task = result(await call(hostile.gw, "liar", "SendMessage", {"message": v1_message("mallory's")}, MALLORY))
    own = {"taskId": own_task["task"]["id"], "contextId": own_task["task"]["contextId"]}
    reached = len(liar.posts())

    stolen = await call(hostile.gw, "liar", method, params(victim, own), MALLORY)

    assert (stolen.status, stolen.json()["error"]["code"]) == (200, TASK_NOT_FOUND), stolen.body
    assert len(liar.posts()) == reached  # nothing reached the agent
    liar.script = lambda request: answer(request, task(victim, "ctx-of-" + victim))
    assert result(await call(hostile.gw, "liar", "GetTask", {"id": victim}, ALICE))["id"] == victim


async def test_two_spellings_of_one_id_that_disagree_are_refused(hostile: Hostile, liar: LyingAgent) -> None:
    reached = len(liar.posts())

    response = await call(hostile.gw, "liar", "GetTaskPushNotificationConfig", {"taskId": "a", "task_id": "b"})

    assert response.status == 400
    assert len(liar.posts()) == reached


# -- (2) the first answer naming an id owns it ------------------------------------------


def always(task_id: str, context_id: str) -> Any:
    """A lying agent's script: every message answered with the same task, a task method with it too."""

    def script(request: Received) -> Reply:
        if request.json()["method"] == "GetTask":
            return answer(request, task(task_id, context_id))
        return answer(request, {"task": task(task_id, context_id)})

    return script


async def test_two_subjects_racing_for_one_task_id_leave_exactly_one_owner(hostile: Hostile, liar: LyingAgent) -> None:
    for _ in range(5):
        shared = uuid.uuid4().hex
        liar.script = always(shared, "ctx-" + shared)
        bearers = [ALICE, MALLORY] * 3

        sent = await asyncio.gather(
            *(call(hostile.gw, "liar", "SendMessage", {"message": v1_message("race")}, b) for b in bearers)
        )

        winners = {b for b, r in zip(bearers, sent, strict=True) if r.status == 200}
        assert len(winners) == 1, [r.body for r in sent]
        for bearer, response in zip(bearers, sent, strict=True):
            if bearer not in winners:
                assert error_of(response) == (502, BAD_BACKEND_ANSWER, "bad_backend_answer")
        (winner,) = winners
        loser = MALLORY if winner == ALICE else ALICE
        before = len(liar.posts())
        assert result(await call(hostile.gw, "liar", "GetTask", {"id": shared}, winner))["id"] == shared
        lost = await call(hostile.gw, "liar", "GetTask", {"id": shared}, loser)
        assert lost.json()["error"]["code"] == TASK_NOT_FOUND
        assert [r.json()["method"] for r in liar.posts()[before:]] == ["GetTask"]  # the winner's only


async def test_an_answer_naming_another_subjects_task_is_refused_and_changes_no_owner(
    hostile: Hostile, liar: LyingAgent
) -> None:
    victim = uuid.uuid4().hex
    liar.script = always(victim, "ctx-" + victim)
    result(await call(hostile.gw, "liar", "SendMessage", {"message": v1_message("mine")}, ALICE))
    counted = await hostile.refusals("liar", "foreign_id")

    lied = await call(hostile.gw, "liar", "SendMessage", {"message": v1_message("hello")}, MALLORY)

    assert error_of(lied) == (502, BAD_BACKEND_ANSWER, "bad_backend_answer")
    assert victim.encode() not in lied.body
    assert await hostile.refusals("liar", "foreign_id") == counted + 1
    assert (await call(hostile.gw, "liar", "GetTask", {"id": victim}, MALLORY)).json()["error"]["code"] == (
        TASK_NOT_FOUND
    )
    assert result(await call(hostile.gw, "liar", "GetTask", {"id": victim}, ALICE))["id"] == victim


def streamed(events: list[dict[str, Any]], line_end: str, content_type: str = "text/event-stream") -> Any:
    def script(request: Received) -> Reply:
        request_id = request.json()["id"]
        frames = [f"data: {json.dumps({'jsonrpc': '2.0', 'id': request_id, 'result': e})}" for e in events]
        return Reply(200, content_type, "".join(f + line_end * 2 for f in frames).encode())

    return script


async def test_a_stream_naming_another_subjects_task_ends_before_that_event(hostile: Hostile, liar: LyingAgent) -> None:
    victim = uuid.uuid4().hex
    liar.script = always(victim, "ctx-" + victim)
    result(await call(hostile.gw, "liar", "SendMessage", {"message": v1_message("mine")}, ALICE))
    own = uuid.uuid4().hex
    liar.script = streamed([{"task": task(own, "ctx-" + own)}, {"task": task(victim, "ctx-" + victim)}], "\n")

    response = await call(
        hostile.gw, "liar", "SendStreamingMessage", {"message": v1_message("hi")}, MALLORY, "text/event-stream"
    )

    assert response.status == 200
    assert victim.encode() not in response.body
    assert (await call(hostile.gw, "liar", "GetTask", {"id": victim}, MALLORY)).json()["error"]["code"] == (
        TASK_NOT_FOUND
    )


@pytest.mark.parametrize(("line_end", "content_type"), [("\r", "text/event-stream"), ("\r\n", "Text/Event-Stream")])
async def test_streamed_ids_are_pinned_whatever_the_line_ends_and_media_type_case(
    hostile: Hostile, liar: LyingAgent, line_end: str, content_type: str
) -> None:
    made = uuid.uuid4().hex
    liar.script = streamed([{"task": task(made, "ctx-" + made)}], line_end, content_type)
    response = await call(
        hostile.gw, "liar", "SendStreamingMessage", {"message": v1_message("hi")}, ALICE, "text/event-stream"
    )
    assert response.status == 200 and made.encode() in response.body

    liar.script = always(made, "ctx-" + made)
    assert result(await call(hostile.gw, "liar", "GetTask", {"id": made}, ALICE))["id"] == made
    stolen = await call(hostile.gw, "liar", "GetTask", {"id": made}, MALLORY)
    assert stolen.json()["error"]["code"] == TASK_NOT_FOUND


# -- (3) the configured URL is the only destination ---------------------------------------


async def test_a_card_naming_another_host_redirects_nothing(hostile: Hostile) -> None:
    redirector = hostile.agents["redirector"]
    counted = await hostile.refusals("redirector", "card_url_ignored")

    sent = await call(hostile.gw, "redirector", "SendMessage", {"message": v1_message("where to?")})

    assert sent.status == 200 and "task" in result(sent)
    assert [r.path for r in redirector.posts()][-1:] == ["/"]  # the configured URL
    assert hostile.sink.connections == 0 and not hostile.sink.data
    assert await hostile.refusals("redirector", "card_url_ignored") == counted + 1
    served = (await card_of(hostile.gw, "redirector")).body.decode()
    assert str(hostile.sink.port) not in served


# -- (4) the served card names only the gateway; a broken card is 502 -----------------------

FOREIGN_URLS = [
    "https://docs.evil.example/agent",
    "HTTP://EVIL.EXAMPLE/",
    "//evil.example/x",
    "http:\\\\evil.example\\x",
    " https://evil.example/leading-space",
    "ht\ttps://evil.example/tab",
    "https://user@127.0.0.1:1/",
    "wss://evil.example/socket",
]


def card_with_urls(agent: LyingAgent, sink: Sink) -> dict[str, Any]:
    return {
        "name": "urls",
        "description": "Docs at https://docs.evil.example in prose stay prose.",
        "documentationUrl": FOREIGN_URLS[0],
        "iconUrl": f"http://127.0.0.1:{sink.port}/icon.png",
        "provider": {"organization": "Evil", "url": FOREIGN_URLS[1]},
        "supportedInterfaces": [
            {"url": agent.url + "/rpc", "protocolBinding": "JSONRPC", "protocolVersion": "1.0"},
            {"url": "https://grpc.evil.example", "protocolBinding": "GRPC", "protocolVersion": "1.0"},
        ],
        "securitySchemes": {"oauth": {"oauth2SecurityScheme": {"oauth2MetadataUrl": FOREIGN_URLS[2]}}},
        "skills": [{"id": "s", "name": "s", "examples": FOREIGN_URLS[3:], "tags": [agent.url + "/own/docs"]}],
    }


def url_like(value: Any) -> list[str]:
    """Every string of a card that a browser or URL library could follow somewhere."""
    if isinstance(value, dict):
        return [u for v in value.values() for u in url_like(v)]
    if isinstance(value, list):
        return [u for v in value for u in url_like(v)]
    if isinstance(value, str):
        squeezed = value.replace("\t", "").strip().replace("\\", "/")
        return [value] if re.match(r"^([a-z][a-z0-9+.-]*:)?//|^(https?|wss?):", squeezed, re.IGNORECASE) else []
    return []


async def test_every_url_of_the_served_cards_points_at_the_gateway(hostile: Hostile) -> None:
    agent = hostile.agents["urls"]
    agent.card_body = json.dumps(card_with_urls(agent, hostile.sink)).encode()
    agent.script = lambda request: answer(request, card_with_urls(agent, hostile.sink))
    gateway_base = f"{hostile.gw.base}/a2a/v1/urls"

    public = await card_of(hostile.gw, "urls")
    extended = await call(hostile.gw, "urls", "GetExtendedAgentCard", {})

    for served in (public.json(), result(extended)):
        assert url_like(served), served  # the rewritten ones are still there
        assert all(u.startswith(gateway_base) for u in url_like(served)), url_like(served)
        assert served["supportedInterfaces"] == [
            {"url": gateway_base, "protocolBinding": "JSONRPC", "protocolVersion": "1.0"}
        ]
        assert served["skills"][0]["tags"] == [gateway_base + "/own/docs"]
        assert "documentationUrl" not in served and "iconUrl" not in served
        assert served["provider"] == {"organization": "Evil"}
        assert served["description"].startswith("Docs at https://docs.evil.example")
    assert hostile.sink.connections == 0


BAD_CARDS = {
    "not-json": b"<html>card</html>",
    "not-an-object": b'["name"]',
    "no-name": b'{"supportedInterfaces": []}',
    "name-not-a-string": b'{"name": 5}',
    "interfaces-not-a-list": b'{"name": "x", "supportedInterfaces": {"url": "http://evil.example"}}',
    "interface-not-an-object": b'{"name": "x", "supportedInterfaces": ["http://evil.example"]}',
    "interface-url-not-a-string": b'{"name": "x", "supportedInterfaces": [{"url": 5, "protocolBinding": "JSONRPC"}]}',
    "url-not-a-string": b'{"name": "x", "url": ["http://evil.example"]}',
}


@pytest.mark.parametrize("body", BAD_CARDS.values(), ids=BAD_CARDS.keys())
async def test_a_malformed_card_is_502_with_a_json_body_and_no_call_goes_out(hostile: Hostile, body: bytes) -> None:
    agent = hostile.agents["badcard"]
    agent.card_body = body
    counted = await hostile.refusals("badcard", "bad_agent_card")
    posts = len(agent.posts())

    served = await card_of(hostile.gw, "badcard")
    sent = await call(hostile.gw, "badcard", "SendMessage", {"message": v1_message("anyone?")})

    assert served.status == 502
    assert served.json()["error"]["data"]["reason"] == "bad_agent_card"
    assert error_of(sent) == (502, BAD_BACKEND_ANSWER, "bad_agent_card")
    assert len(agent.posts()) == posts
    assert await hostile.refusals("badcard", "bad_agent_card") == counted + 2


async def test_a_malformed_extended_card_is_502(hostile: Hostile, liar: LyingAgent) -> None:
    liar.script = lambda request: answer(request, {"supportedInterfaces": "https://evil.example"})

    response = await call(hostile.gw, "liar", "GetExtendedAgentCard", {})

    assert error_of(response) == (502, BAD_BACKEND_ANSWER, "bad_agent_card")


# -- (5) push-notification webhooks ---------------------------------------------------------


def webhook_attacks(sink: Sink) -> dict[str, tuple[str, dict[str, Any]]]:
    hook = f"https://127.0.0.1:{sink.port}/hook"
    message = v1_message("push me")
    return {
        "create-loopback": ("CreateTaskPushNotificationConfig", {"taskId": "t", "id": "c", "url": hook}),
        "create-plain-http": (
            "CreateTaskPushNotificationConfig",
            {"taskId": "t", "url": "http://8.8.8.8/hook"},
        ),
        "create-mapped": (
            "CreateTaskPushNotificationConfig",
            {"taskId": "t", "url": f"https://[::ffff:127.0.0.1]:{sink.port}/hook"},
        ),
        "create-decimal-loopback": (
            "CreateTaskPushNotificationConfig",
            {"taskId": "t", "url": f"https://2130706433:{sink.port}/hook"},
        ),
        "create-metadata": ("CreateTaskPushNotificationConfig", {"taskId": "t", "url": "https://169.254.169.254/"}),
        "create-unresolvable": ("CreateTaskPushNotificationConfig", {"taskId": "t", "url": "https://nowhere.invalid/"}),
        "create-userinfo": ("CreateTaskPushNotificationConfig", {"taskId": "t", "url": "https://8.8.8.8@127.0.0.1/"}),
        "create-nested-spelling": (
            "CreateTaskPushNotificationConfig",
            {"taskId": "t", "url": "https://8.8.8.8/", "push_notification_config": {"url": hook}},
        ),
        "send-v1-config": (
            "SendMessage",
            {"message": message, "configuration": {"taskPushNotificationConfig": {"url": hook}}},
        ),
        "send-snake-case": (
            "SendMessage",
            {"message": message, "configuration": {"task_push_notification_config": {"url": hook}}},
        ),
        "send-0.3-config": (
            "message/send",
            {"message": message, "configuration": {"pushNotificationConfig": {"url": hook}}},
        ),
        "set-0.3": ("tasks/pushNotificationConfig/set", {"taskId": "t", "pushNotificationConfig": {"url": hook}}),
        "url-not-a-string": ("CreateTaskPushNotificationConfig", {"taskId": "t", "url": ["https://8.8.8.8/"]}),
    }


async def test_webhooks_to_non_public_hosts_are_refused_and_nothing_reaches_them(
    hostile: Hostile, pusher: Process, servers: Servers
) -> None:
    refused_sink, allowed_sink = servers.sink(), servers.sink()

    for name, (method, params) in webhook_attacks(refused_sink).items():
        response = await call(hostile.gw, "pusher", method, params)
        assert error_of(response) == (200, POLICY_DENIED, "webhook_not_allowed"), name

    # The control: the same agent given an allow-listed webhook calls it, so silence above is the gateway's doing.
    allowed = f"https://{ALLOWED_WEBHOOK_HOST}:{allowed_sink.port}/hook"
    sent = await call(
        hostile.gw,
        "pusher",
        "SendMessage",
        {"message": v1_message("push me"), "configuration": {"taskPushNotificationConfig": {"url": allowed}}},
    )
    assert result(sent)["task"]["status"]["state"] == "TASK_STATE_COMPLETED"

    async def pushed() -> bool:
        return allowed_sink.connections > 0

    await poll(pushed, timeout=10.0)
    assert refused_sink.connections == 0 and not refused_sink.data


async def test_an_allow_listed_webhook_is_created_end_to_end(hostile: Hostile, pusher: Process) -> None:
    made = result(await call(hostile.gw, "pusher", "SendMessage", {"message": v1_message("configure me")}))["task"]
    hook = f"https://{ALLOWED_WEBHOOK_HOST}:1/hook"

    created = await call(
        hostile.gw, "pusher", "CreateTaskPushNotificationConfig", {"taskId": made["id"], "id": "cfg", "url": hook}
    )
    listed = await call(hostile.gw, "pusher", "ListTaskPushNotificationConfigs", {"taskId": made["id"]})

    assert result(created)["url"] == hook
    assert [c["url"] for c in result(listed)["configs"]] == [hook]
    stolen = await call(hostile.gw, "pusher", "ListTaskPushNotificationConfigs", {"taskId": made["id"]}, MALLORY)
    assert stolen.json()["error"]["code"] == TASK_NOT_FOUND


NON_PUBLIC = [
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "192.0.0.170",
    "198.18.0.1",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fec0::1",
    "fc00::1",
    "fd00:ec2::254",
    "ff02::1",
    "ff0e::1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "::127.0.0.1",
    "::ffff:0:7f00:1",
    "2002:7f00:1::1",
    "2002:a9fe:a9fe::1",
    "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe",
    "64:ff9b:1::a00:1",
    "2001::1",
    "2001:db8::1",
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8"]


@pytest.mark.parametrize("address", NON_PUBLIC)
def test_non_public_address_forms_are_not_public(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_public(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


WEBHOOK_URLS = {
    "https://8.8.8.8/hook": True,
    "https://[2606:4700:4700::1111]/": True,
    "http://8.8.8.8/hook": False,
    "https://127.0.0.1/": False,
    "https://2130706433/": False,  # 127.0.0.1 in decimal, as getaddrinfo reads it
    "https://0x7f.1/": False,
    "https://[::ffff:7f00:1]/": False,
    "https://localhost/": False,
    "https://nowhere.invalid/": False,
    "https://user:pw@8.8.8.8/": False,
    " https://8.8.8.8/": False,
    "https://8.8.8.8:99999/": False,
    "https://hooks.allowed.test/": True,  # allow-listed, resolution not needed
    "https://HOOKS.Allowed.Test./": True,
    "http://hooks.allowed.test/": False,  # allow-listed hosts still need https
}


@pytest.mark.parametrize(("url", "allowed"), WEBHOOK_URLS.items())
async def test_webhook_urls(url: str, allowed: bool) -> None:
    assert await webhook_allowed(url, frozenset({"hooks.allowed.test"})) is allowed


# -- (7) answers the gateway reads must be JSON-RPC answers to the request -------------------

LIES = {
    "not-json": b"<html>ok</html>",
    "array": b"[]",
    "no-jsonrpc": b'{"id": 1, "result": {}}',
    "other-id": b'{"jsonrpc": "2.0", "id": 2, "result": {}}',
    "id-of-another-type": b'{"jsonrpc": "2.0", "id": "1", "result": {}}',
    "result-and-error": b'{"jsonrpc": "2.0", "id": 1, "result": {}, "error": {"code": 1, "message": "x"}}',
    "duplicate-keys": b'{"jsonrpc": "2.0", "id": 1, "result": {"task": {"id": "a"}}, "result": {"task": {"id": "b"}}}',
    "nan": b'{"jsonrpc": "2.0", "id": 1, "result": {"n": NaN}}',
}


@pytest.mark.parametrize("body", LIES.values(), ids=LIES.keys())
async def test_an_answer_that_is_not_json_rpc_is_502(hostile: Hostile, liar: LyingAgent, body: bytes) -> None:
    liar.script = lambda request: Reply(body=body)
    counted = await hostile.refusals("liar", "bad_backend_answer")

    response = await call(hostile.gw, "liar", "SendMessage", {"message": v1_message("hi")})

    assert error_of(response) == (502, BAD_BACKEND_ANSWER, "bad_backend_answer")
    assert await hostile.refusals("liar", "bad_backend_answer") == counted + 1


@pytest.mark.parametrize(
    ("status", "content_type", "body"),
    [
        (200, "application/json", b'{"jsonrpc": "2.0", "id": 1, "error": {"code": -32001, "message": "no task"}}'),
        (500, "text/plain", b"agent crashed"),
        (404, "text/html", b"<h1>lost</h1>"),
    ],
)
async def test_the_agents_errors_are_relayed_unchanged(
    hostile: Hostile, liar: LyingAgent, status: int, content_type: str, body: bytes
) -> None:
    liar.script = lambda request: Reply(status, content_type, body)

    response = await call(hostile.gw, "liar", "SendMessage", {"message": v1_message("hi")})

    assert (response.status, response.body) == (status, body)


@pytest.mark.parametrize("status", [401, 403])
async def test_an_agent_refusing_the_gateway_is_502_backend_auth(
    hostile: Hostile, liar: LyingAgent, status: int
) -> None:
    liar.script = lambda request: Reply(status, "application/json", b'{"error": "bad gateway key"}')
    counted = await hostile.refusals("liar", "backend_auth")

    response = await call(hostile.gw, "liar", "SendMessage", {"message": v1_message("hi")})

    assert error_of(response) == (502, BAD_BACKEND_ANSWER, "backend_auth")
    assert await hostile.refusals("liar", "backend_auth") == counted + 1


async def test_an_answer_with_a_lone_surrogate_is_the_agents_fault(hostile: Hostile, liar: LyingAgent) -> None:
    liar.script = lambda request: Reply(body=b'{"jsonrpc": "2.0", "id": 1, "result": {"kind": "\\ud800"}}')

    response = await call(hostile.gw, "liar", "SendMessage", {"message": v1_message("hi")})

    assert error_of(response) == (502, BAD_BACKEND_ANSWER, "bad_backend_answer")
