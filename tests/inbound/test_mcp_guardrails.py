"""Guardrails on what an MCP server sends back (contract 15), through a real MCP SDK server and client.

The backend (tests/secret_planting_backend.py) plants one secret of each kind, beside near-misses
that must come through untouched, in every place a server puts text: tool results (content text,
an embedded resource, a resource link, structuredContent, _meta), JSON-RPC errors and isError
results, resources/read, prompts/get, progress and logging notifications. Its other tools ask the
client for things (sampling, form and URL elicitation) and return what came back, so a test sees
both what the client's callbacks were given and what the backend got.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, MCPError, types
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.guardrail_checks import audit_entries, guardrail_counts, guardrail_lines
from tests.hostile_backend import HostileBackend, http, initialize_result, json_answer
from tests.mcp_client import call_text, sdk_client
from tests.secret_planting_backend import (
    CLEAN,
    DANGEROUS_URL,
    PLANTED,
    PLANTED_REDACTED,
    PLANTED_RESOURCE,
    SAMPLING_PROMPT,
    SECRETS,
    PlantingBackend,
    planted_result,
    planting_backend,
)
from tests.support import (
    InProcessGateway,
    RawResponse,
    in_process_gateway,
    mcp_headers,
    raw_call,
    raw_request,
    raw_session,
)
from tests.token_checking_backend import served

TARGET = "vault"
VIRTUAL = "vault-desk"
GUARDRAIL = -32053
INVALID_REQUEST = -32600
# How many strings of the `leak` result hold PLANTED: content text, embedded resource text, the
# resource link's name and description, two in structuredContent, one in _meta.
PLANTED_PLACES = 7
MODEL_ANSWER = "a summary from the client's model"
PROTOCOL = ("MCP-Protocol-Version", "2025-11-25")


def guardrails(secrets: str = "redact", sampling: str = "allow", sensitive_fields: str = "block") -> str:
    return f"""\
apiVersion: agentgw.dev/v1alpha1
kind: GuardrailPolicy
metadata: {{name: guardrails}}
spec:
  targetRefs: [{TARGET}]
  appliesTo: [mcp]
  secrets: {secrets}
  sampling: {sampling}
  elicitation: {{action: allow, sensitiveFields: {sensitive_fields}}}
"""


def gateway_config(backend_url: str, store: dict[str, Any] | None = None) -> dict[str, Any]:
    """The backend as target `vault`, also the only member of virtual server `vault-desk` (no prefix)."""
    config: dict[str, Any] = {
        "server": {"metrics_listen": "127.0.0.1:0"},
        "mcp": {
            "targets": [{"name": TARGET, "backends": [{"url": backend_url}]}],
            "virtual_servers": [{"name": VIRTUAL, "members": [{"target": TARGET, "prefix": ""}]}],
        },
    }
    if store is not None:
        config["session_store"] = store
    return config


@contextlib.asynccontextmanager
async def guarded(
    tmp: Path, backend_url: str, policies: str | None, store: dict[str, Any] | None = None, name: str = "gateway"
) -> AsyncIterator[InProcessGateway]:
    async with in_process_gateway(tmp, gateway_config(backend_url, store), policies, name=name) as gw:
        yield gw


def url(gw: InProcessGateway, server: str = TARGET) -> str:
    return f"{gw.mcp_url}/{server}"


@pytest.fixture
async def backend() -> AsyncIterator[PlantingBackend]:
    async with planting_backend() as planting:
        yield planting


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Each session store, so what the gateway notes of the requests it relayed is kept in both."""
    if request.param == "memory":
        return {"type": "memory"}
    prefix = f"guardrails-{uuid.uuid4().hex}:"
    return {"type": "redis", "url": request.getfixturevalue("redis_url"), "key_prefix": prefix}


# -- the client's side ----------------------------------------------------------------------


@dataclass
class ClientSide:
    """What the SDK client's callbacks were given."""

    sampled: list[types.CreateMessageRequestParams] = field(default_factory=list)
    elicited: list[types.ElicitRequestParams] = field(default_factory=list)
    logged: list[Any] = field(default_factory=list)
    progress: list[str | None] = field(default_factory=list)

    async def sample(self, context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        self.sampled.append(params)
        content = types.TextContent(type="text", text=MODEL_ANSWER)
        return types.CreateMessageResult(role="assistant", content=content, model="client-model")

    async def elicit(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.elicited.append(params)
        if isinstance(params, types.ElicitRequestURLParams):
            return types.ElicitResult(action="accept")
        return types.ElicitResult(action="accept", content={"city": "Lisbon"})

    async def log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logged.append(params.data)

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.progress.append(message)

    def callbacks(self) -> dict[str, Any]:
        return {"sampling_callback": self.sample, "elicitation_callback": self.elicit, "logging_callback": self.log}


@contextlib.asynccontextmanager
async def connected(
    gw: InProcessGateway,
    side: ClientSide | None = None,
    server: str = TARGET,
    seen: list[httpx2.Response] | None = None,
) -> AsyncIterator[Client]:
    """The SDK client on `server` through the gateway, with `side`'s callbacks; its HTTP answers in `seen`."""
    callbacks = (side or ClientSide()).callbacks()
    async with sdk_client(url(gw, server), seen=seen, **callbacks) as client:
        yield client


async def asked(client: Client, tool: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    """What one of the backend's asking tools got back from the client: {"result": ...} or {"error": ...}."""
    answer: dict[str, Any] = json.loads(await call_text(client, tool, arguments))
    return answer


def dumped(result: types.CallToolResult) -> dict[str, Any]:
    """A result as its JSON; without `resultType`, which a 2025 server leaves out and the SDK fills in."""
    value: dict[str, Any] = result.model_dump(by_alias=True, mode="json", exclude_none=True, exclude={"result_type"})
    return value


def replaced(value: Any, old: str, new: str) -> Any:
    """`value` with every string equal to `old` (or ending in it) ending in `new` instead."""
    if isinstance(value, str):
        return value.removesuffix(old) + new if value.endswith(old) else value
    if isinstance(value, dict):
        return {key: replaced(item, old, new) for key, item in value.items()}
    if isinstance(value, list):
        return [replaced(item, old, new) for item in value]
    return value


def holds_no_secret(text: str) -> bool:
    return not any(secret in text for secret in SECRETS.values())


def session_of(seen: list[httpx2.Response]) -> str:
    """The gateway's session id, from the answers the SDK client got."""
    return next(r.headers["mcp-session-id"] for r in seen if "mcp-session-id" in r.headers)


async def post_in_session(gw: InProcessGateway, session_id: str, message: Any, server: str = TARGET) -> RawResponse:
    headers = mcp_headers(gw.port, ("Mcp-Session-Id", session_id), PROTOCOL)
    return await raw_request(gw.port, "POST", f"/mcp/v1/{server}", headers, json.dumps(message).encode())


# -- what the operator sees -----------------------------------------------------------------


def gateway_log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every record but the SDK's own: its server and client run in this process and log what
    they handled themselves (the backend logs the error its tool raised, secret included)."""
    records = [record for record in caplog.records if not record.name.startswith("mcp")]
    return "\n".join(f"{r.getMessage()} {getattr(r, 'fields', '')} {r.exc_text or ''}" for r in records)


# -- redact ---------------------------------------------------------------------------------


async def test_every_place_of_a_tool_result_is_redacted_and_the_rest_kept(tmp: Path, backend: PlantingBackend) -> None:
    async with guarded(tmp, backend.url, guardrails("redact")) as gw:
        async with connected(gw) as client:
            result = await client.call_tool("leak", {})
        session_id = await raw_session(gw.port, f"/mcp/v1/{TARGET}")
        raw = await raw_call(gw.port, session_id, "leak", {}, path=f"/mcp/v1/{TARGET}")

    expected = replaced(dumped(planted_result()), PLANTED, PLANTED_REDACTED)
    assert dumped(result) == expected
    assert result.structured_content is not None and result.structured_content["clean"] == CLEAN
    assert raw.status == 200
    [message] = raw.sse_messages()  # every event still parses as JSON
    assert message["id"] == 2
    assert message["result"] == expected
    assert holds_no_secret(raw.body.decode())


async def test_the_stateless_revision_is_screened_too(tmp: Path, backend: PlantingBackend) -> None:
    async with guarded(tmp, backend.url, guardrails("redact")) as gw:
        async with sdk_client(url(gw), mode="auto") as client:
            result = await client.call_tool("leak", {})

    got = dumped(result)
    got["_meta"].pop("io.modelcontextprotocol/serverInfo")  # what a 2026-07-28 server adds to every result
    assert got == replaced(dumped(planted_result()), PLANTED, PLANTED_REDACTED)


async def test_a_json_rpc_error_and_an_is_error_result_are_redacted(tmp: Path, backend: PlantingBackend) -> None:
    async with guarded(tmp, backend.url, guardrails("redact")) as gw, connected(gw) as client:
        with pytest.raises(MCPError) as raised:
            await client.call_tool("fail_rpc", {})
        failed = await client.call_tool("fail_tool", {})

    assert raised.value.code == -32000  # the backend's own code stays
    assert raised.value.message == f"failed: {PLANTED_REDACTED}"
    assert raised.value.data == {"detail": PLANTED_REDACTED}
    assert failed.is_error
    [content] = failed.content
    assert isinstance(content, types.TextContent)
    assert content.text == f"Error executing tool fail_tool: {PLANTED_REDACTED}"


async def test_a_read_resource_and_a_prompt_are_redacted(tmp: Path, backend: PlantingBackend) -> None:
    async with guarded(tmp, backend.url, guardrails("redact")) as gw, connected(gw) as client:
        read = await client.read_resource(PLANTED_RESOURCE)
        prompt = await client.get_prompt("leaky")

    [contents] = read.contents
    assert isinstance(contents, types.TextResourceContents)
    assert contents.text == PLANTED_REDACTED
    [message] = prompt.messages
    assert isinstance(message.content, types.TextContent)
    assert message.content.text == PLANTED_REDACTED


async def test_progress_and_logging_notifications_are_redacted(tmp: Path, backend: PlantingBackend) -> None:
    side = ClientSide()
    async with guarded(tmp, backend.url, guardrails("redact")) as gw, connected(gw, side) as client:
        result = await client.call_tool("chatty", {}, progress_callback=side.on_progress)

    assert not result.is_error
    assert side.progress == [PLANTED_REDACTED, CLEAN]
    assert side.logged == [{"detail": PLANTED_REDACTED}, {"detail": CLEAN}]


# -- block ----------------------------------------------------------------------------------


def assert_guardrail_error(error: Any) -> None:
    """The JSON-RPC error that takes the place of what a guardrail blocked (an MCPError or its dict)."""
    code, data = (error.code, error.data) if isinstance(error, MCPError) else (error["code"], error["data"])
    assert code == GUARDRAIL
    assert data["reason"] == "guardrail"
    assert data["detector"] in SECRETS


async def test_a_blocked_tool_result_becomes_the_guardrail_error(tmp: Path, backend: PlantingBackend) -> None:
    async with guarded(tmp, backend.url, guardrails("block")) as gw:
        async with connected(gw) as client:
            with pytest.raises(MCPError) as raised:
                await client.call_tool("leak", {})
            quiet = await call_text(client, "quiet")
        session_id = await raw_session(gw.port, f"/mcp/v1/{TARGET}")
        raw = await raw_call(gw.port, session_id, "leak", {}, path=f"/mcp/v1/{TARGET}")

    assert_guardrail_error(raised.value)
    assert quiet == CLEAN  # what holds no secret still comes through
    [message] = raw.sse_messages()
    assert message["id"] == 2 and "result" not in message
    assert_guardrail_error(message["error"])
    assert holds_no_secret(raw.body.decode())


async def test_blocked_errors_resources_and_prompts_become_the_guardrail_error(
    tmp: Path, backend: PlantingBackend
) -> None:
    async with guarded(tmp, backend.url, guardrails("block")) as gw, connected(gw) as client:
        raised = []
        for call in (
            client.call_tool("fail_rpc", {}),
            client.call_tool("fail_tool", {}),
            client.read_resource(PLANTED_RESOURCE),
            client.get_prompt("leaky"),
        ):
            with pytest.raises(MCPError) as error:
                await call
            raised.append(error.value)

    for refusal in raised:
        assert_guardrail_error(refusal)
        assert holds_no_secret(f"{refusal.message} {refusal.data}")


async def test_a_notification_holding_a_secret_is_dropped(tmp: Path, backend: PlantingBackend) -> None:
    side = ClientSide()
    async with guarded(tmp, backend.url, guardrails("block")) as gw, connected(gw, side) as client:
        text = await client.call_tool("chatty", {}, progress_callback=side.on_progress)

    assert not text.is_error
    assert side.progress == [CLEAN]
    assert side.logged == [{"detail": CLEAN}]


# -- warn -----------------------------------------------------------------------------------


async def test_warn_relays_everything_unchanged_and_counts_it(tmp: Path, backend: PlantingBackend) -> None:
    side = ClientSide()
    async with guarded(tmp, backend.url, guardrails("warn")) as gw:
        async with connected(gw, side) as client:
            result = await client.call_tool("leak", {})
            await client.call_tool("chatty", {}, progress_callback=side.on_progress)
        counts = await guardrail_counts(gw)

    assert dumped(result) == dumped(planted_result())
    assert side.progress == [PLANTED, CLEAN]
    assert side.logged == [{"detail": PLANTED}, {"detail": CLEAN}]
    # The result's places, the progress notification, the log message.
    assert counts == {(detector, "warn"): float(PLANTED_PLACES + 2) for detector in SECRETS}


# -- what holds no secret is relayed as it came -----------------------------------------------


async def quiet_call(port: int, path: str) -> RawResponse:
    session_id = await raw_session(port, path)
    answer = await raw_call(port, session_id, "quiet", {}, path=path)
    assert answer.status == 200, answer.body
    return answer


def data_lines(response: RawResponse) -> list[bytes]:
    return [line for line in response.body.splitlines() if line.startswith(b"data:")]


async def test_an_answer_without_a_secret_is_relayed_byte_for_byte(tmp: Path, backend: PlantingBackend) -> None:
    async with (
        guarded(tmp, backend.url, guardrails("redact"), name="guarded") as with_policy,
        guarded(tmp, backend.url, None, name="unguarded") as without_policy,
    ):
        guarded_answer = await quiet_call(with_policy.port, f"/mcp/v1/{TARGET}")
        unguarded_answer = await quiet_call(without_policy.port, f"/mcp/v1/{TARGET}")
    direct = await quiet_call(backend.port, "/mcp")

    assert guarded_answer.body == unguarded_answer.body
    assert data_lines(guarded_answer) == data_lines(direct)  # the backend's own serialisation


async def test_a_json_answer_without_a_secret_keeps_the_backends_bytes(tmp: Path) -> None:
    # Spacing and key order of the backend's own: a gateway that re-serialised would change them.
    body = b'{ "result" : {"content": [ {"text": "%s", "type":"text"} ], "isError":false}, "id":2, "jsonrpc":"2.0" }'
    body %= CLEAN.encode()
    hostile = await HostileBackend().start()
    tools = {"tools": [{"name": "quiet", "inputSchema": {"type": "object"}}]}
    hostile.answers["tools/list"] = lambda message: json_answer(message, tools)
    hostile.answers["tools/call"] = lambda message: http(200, body)
    try:
        async with guarded(tmp, hostile.url, guardrails("redact")) as gw:
            answer = await quiet_call(gw.port, f"/mcp/v1/{TARGET}")
    finally:
        await hostile.stop()

    assert answer.body == body


# -- virtual servers and resumed streams -----------------------------------------------------


def virtual_server_guardrails(secrets: str) -> str:
    return guardrails(secrets).replace(f"targetRefs: [{TARGET}]", f"targetRefs: [{VIRTUAL}]")


async def test_a_policy_naming_a_virtual_server_guards_its_members_there_only(
    tmp: Path, backend: PlantingBackend
) -> None:
    async with guarded(tmp, backend.url, virtual_server_guardrails("redact")) as gw:
        async with connected(gw, server=VIRTUAL) as client:
            through_virtual = await client.call_tool("leak", {})
        async with connected(gw) as client:
            direct = await client.call_tool("leak", {})

    assert dumped(through_virtual) == replaced(dumped(planted_result()), PLANTED, PLANTED_REDACTED)
    assert dumped(direct) == dumped(planted_result())


async def test_a_blocked_result_through_a_virtual_server_becomes_the_guardrail_error(
    tmp: Path, backend: PlantingBackend
) -> None:
    side = ClientSide()
    async with guarded(tmp, backend.url, guardrails("block")) as gw, connected(gw, side, server=VIRTUAL) as client:
        with pytest.raises(MCPError) as raised:
            await client.call_tool("leak", {})
        await client.call_tool("chatty", {}, progress_callback=side.on_progress)

    assert_guardrail_error(raised.value)
    assert side.progress == [CLEAN]
    assert side.logged == [{"detail": CLEAN}]


async def test_a_stream_the_client_resumes_is_screened_too(tmp: Path) -> None:
    # The tool closes its stream before it answers; the SDK client resumes it with a GET carrying
    # Last-Event-ID, and the server replays the result from its event store.
    async with planting_backend(resumable=True) as resumable, guarded(tmp, resumable.url, guardrails()) as gw:
        async with connected(gw) as client:
            result = await client.call_tool("leak_after_reconnect", {})

    assert dumped(result) == replaced(dumped(planted_result()), PLANTED, PLANTED_REDACTED)


def replaying_backend() -> Starlette:
    """A backend whose every resumed stream (a GET with Last-Event-ID) replays a sampling request
    and a result holding secrets."""
    sampling = {"jsonrpc": "2.0", "id": 40, "method": "sampling/createMessage", "params": {"maxTokens": 1}}
    result = {"jsonrpc": "2.0", "id": 2, "result": {"content": [{"type": "text", "text": PLANTED}]}}
    replayed = "".join(f"id: {n}\ndata: {json.dumps(m)}\n\n" for n, m in enumerate((sampling, result), start=2))

    async def mcp(request: Request) -> Response:
        if request.method == "GET":
            return Response(replayed, media_type="text/event-stream")
        message = json.loads(await request.body())
        if "id" not in message:
            return Response(status_code=202)
        answer = {"jsonrpc": "2.0", "id": message["id"], "result": initialize_result()}
        return JSONResponse(answer, headers={"mcp-session-id": "replaying-1"})

    return Starlette(routes=[Route("/mcp", mcp, methods=["GET", "POST"])])


async def test_a_resumed_stream_is_screened_like_any_other(tmp: Path) -> None:
    async with served(replaying_backend()) as port:
        backend_url = f"http://127.0.0.1:{port}/mcp"
        async with guarded(tmp, backend_url, guardrails("redact", sampling="deny")) as gw:
            session_id = await raw_session(gw.port, f"/mcp/v1/{TARGET}")
            headers = [
                ("Host", f"127.0.0.1:{gw.port}"),
                ("Accept", "text/event-stream"),
                ("Mcp-Session-Id", session_id),
                ("Last-Event-ID", "1"),
                PROTOCOL,
            ]
            resumed = await raw_request(gw.port, "GET", f"/mcp/v1/{TARGET}", headers)

    assert resumed.status == 200
    assert holds_no_secret(resumed.body.decode())
    [answer] = resumed.sse_messages()  # the sampling request held back
    assert answer["result"]["content"][0]["text"] == PLANTED_REDACTED


# -- sampling and elicitation ---------------------------------------------------------------


async def test_denied_sampling_never_reaches_the_client_and_the_backend_gets_the_error(
    tmp: Path, backend: PlantingBackend
) -> None:
    side = ClientSide()
    async with guarded(tmp, backend.url, guardrails(sampling="deny")) as gw, connected(gw, side) as client:
        got = await asked(client, "ask_model")

    assert side.sampled == []
    assert got["error"]["code"] == GUARDRAIL
    assert got["error"]["data"] == {"reason": "guardrail", "detector": "sampling"}


async def test_allowed_sampling_reaches_the_client_and_its_answer_the_backend(
    tmp: Path, backend: PlantingBackend
) -> None:
    side = ClientSide()
    async with guarded(tmp, backend.url, guardrails(sampling="allow")) as gw, connected(gw, side) as client:
        got = await asked(client, "ask_model")

    assert len(side.sampled) == 1
    assert side.sampled[0].messages[0].content == types.TextContent(type="text", text=SAMPLING_PROMPT)
    assert got["result"]["content"] == {"type": "text", "text": MODEL_ANSWER}
    assert len(backend.answers()) == 1


async def test_an_elicitation_asking_for_a_password_is_refused_and_an_innocent_one_relayed(
    tmp: Path, backend: PlantingBackend
) -> None:
    side = ClientSide()
    async with guarded(tmp, backend.url, guardrails(sensitive_fields="block")) as gw, connected(gw, side) as client:
        refused = await asked(client, "ask_user", {"field": "password"})
        assert side.elicited == []
        relayed = await asked(client, "ask_user", {"field": "city"})

    assert refused["error"]["code"] == GUARDRAIL
    assert refused["error"]["data"] == {"reason": "guardrail", "detector": "elicitation"}
    [elicited] = side.elicited
    assert isinstance(elicited, types.ElicitRequestFormParams)
    assert list(elicited.requested_schema["properties"]) == ["city"]
    assert relayed["result"] == {"action": "accept", "content": {"city": "Lisbon"}}


async def test_sensitive_fields_allow_relays_the_password_elicitation(tmp: Path, backend: PlantingBackend) -> None:
    side = ClientSide()
    async with guarded(tmp, backend.url, guardrails(sensitive_fields="allow")) as gw, connected(gw, side) as client:
        relayed = await asked(client, "ask_user", {"field": "password"})

    assert len(side.elicited) == 1
    assert relayed["result"]["action"] == "accept"


async def test_a_url_elicitation_to_plain_http_is_refused_and_to_https_relayed(
    tmp: Path, backend: PlantingBackend
) -> None:
    side = ClientSide()
    safe_url = "https://login.example.test/sign-in"
    async with guarded(tmp, backend.url, guardrails()) as gw, connected(gw, side) as client:
        refused = await asked(client, "ask_url", {"url": DANGEROUS_URL})
        assert side.elicited == []
        relayed = await asked(client, "ask_url", {"url": safe_url})

    assert refused["error"]["code"] == GUARDRAIL
    assert refused["error"]["data"] == {"reason": "guardrail", "detector": "elicitation"}
    [elicited] = side.elicited
    assert isinstance(elicited, types.ElicitRequestURLParams)
    assert elicited.url == safe_url
    assert relayed["result"] == {"action": "accept"}


async def test_a_sampling_request_holding_a_secret_is_redacted_or_blocked(tmp: Path, backend: PlantingBackend) -> None:
    redacting, blocking = ClientSide(), ClientSide()
    async with guarded(tmp, backend.url, guardrails("redact"), name="redacting") as gw, connected(gw, redacting) as c:
        redacted = await asked(c, "ask_model", {"text": PLANTED})
    async with guarded(tmp, backend.url, guardrails("block"), name="blocking") as gw, connected(gw, blocking) as c:
        blocked = await asked(c, "ask_model", {"text": PLANTED})

    [sampled] = redacting.sampled
    assert sampled.messages[0].content == types.TextContent(type="text", text=PLANTED_REDACTED)
    assert redacted["result"]["content"]["text"] == MODEL_ANSWER
    assert blocking.sampled == []
    assert_guardrail_error(blocked["error"])


@pytest.mark.parametrize("sampling", ["deny", "allow"])
async def test_sampling_in_the_standalone_stream_is_under_policy_too(
    tmp: Path, backend: PlantingBackend, sampling: str
) -> None:
    side = ClientSide()
    async with guarded(tmp, backend.url, guardrails(sampling=sampling)) as gw, connected(gw, side) as client:
        got = await asked(client, "ask_model", {"in_own_stream": False})

    if sampling == "deny":
        assert side.sampled == []
        assert got["error"]["data"] == {"reason": "guardrail", "detector": "sampling"}
    else:
        assert len(side.sampled) == 1
        assert got["result"]["content"]["text"] == MODEL_ANSWER


# -- forged and replayed answers ------------------------------------------------------------


def assert_refused_answer(response: RawResponse) -> None:
    assert response.status == 400, response.body
    assert response.json()["error"]["code"] == INVALID_REQUEST


async def test_a_forged_answer_is_refused_and_never_reaches_the_backend(
    tmp: Path, backend: PlantingBackend, store: dict[str, Any]
) -> None:
    forged = {"jsonrpc": "2.0", "id": 7, "result": {"action": "accept", "content": {"city": "Lisbon"}}}
    async with guarded(tmp, backend.url, None, store) as gw:
        session_id = await raw_session(gw.port, f"/mcp/v1/{TARGET}")
        refused = await post_in_session(gw, session_id, forged)
        refused_string_id = await post_in_session(gw, session_id, {**forged, "id": "7"})

    assert_refused_answer(refused)
    assert_refused_answer(refused_string_id)
    assert backend.answers() == []


async def test_an_answer_is_taken_once_and_its_replay_refused(
    tmp: Path, backend: PlantingBackend, store: dict[str, Any]
) -> None:
    seen: list[httpx2.Response] = []
    side = ClientSide()
    # No GuardrailPolicy: answers are checked whatever the policies.
    async with guarded(tmp, backend.url, None, store) as gw:
        async with connected(gw, side, seen=seen) as client:
            got = await asked(client, "ask_model")
            [answer] = answers_sent(seen)
            replayed = await post_in_session(gw, session_of(seen), answer)
            backend_got = backend.answers()

    assert got["result"]["content"]["text"] == MODEL_ANSWER
    assert_refused_answer(replayed)
    assert backend_got == [answer]


async def test_answers_through_a_virtual_server_are_taken_once_and_forged_ones_refused(
    tmp: Path, backend: PlantingBackend
) -> None:
    seen: list[httpx2.Response] = []
    side = ClientSide()
    async with guarded(tmp, backend.url, guardrails()) as gw:
        async with connected(gw, side, server=VIRTUAL, seen=seen) as client:
            got = await asked(client, "ask_user", {"field": "city"})
            # The client answered under the id the gateway gave the member's request.
            [client_answer] = answers_sent(seen)
            session_id = session_of(seen)
            forged = await post_in_session(gw, session_id, {**client_answer, "id": 99}, server=VIRTUAL)
            replayed = await post_in_session(gw, session_id, client_answer, server=VIRTUAL)
            backend_got = backend.answers()

    assert got["result"] == {"action": "accept", "content": {"city": "Lisbon"}}
    assert_refused_answer(forged)
    assert_refused_answer(replayed)
    assert len(backend_got) == 1


@pytest.fixture
async def asking_backend() -> AsyncIterator[HostileBackend]:
    """A hand-made backend whose `ask` tool streams a sampling request (id 5) before its result."""
    server = await HostileBackend().start()
    tools = {"tools": [{"name": "ask", "inputSchema": {"type": "object"}}]}
    server.answers["tools/list"] = lambda message: json_answer(message, tools)
    sampling = {"jsonrpc": "2.0", "id": 5, "method": "sampling/createMessage", "params": {"maxTokens": 1}}

    def ask(message: dict[str, Any]) -> bytes:
        result = {"jsonrpc": "2.0", "id": message["id"], "result": {"content": []}}
        events = "".join(f"event: message\ndata: {json.dumps(m)}\n\n" for m in (sampling, result))
        return http(200, events.encode(), "text/event-stream")

    server.answers["tools/call"] = ask
    yield server
    await server.stop()


async def test_one_answer_sent_twice_in_a_batch_is_refused(
    tmp: Path, asking_backend: HostileBackend, store: dict[str, Any]
) -> None:
    answer = {"jsonrpc": "2.0", "id": 5, "result": {"role": "assistant", "content": {"type": "text", "text": "x"}}}
    async with guarded(tmp, asking_backend.url, guardrails(), store) as gw:
        session_id = await raw_session(gw.port, f"/mcp/v1/{TARGET}")
        asked_for = await raw_call(gw.port, session_id, "ask", {}, path=f"/mcp/v1/{TARGET}")
        twice = await post_in_session(gw, session_id, [answer, answer])

    assert [m.get("method") for m in asked_for.sse_messages()] == ["sampling/createMessage", None]
    assert [m for m in asking_backend.received if not isinstance(m, dict)] == []  # no batch reached it
    assert_refused_answer(twice)


def answers_sent(seen: list[httpx2.Response]) -> list[Any]:
    """The answers the SDK client POSTed to a server's requests, as it sent them."""
    answers = []
    for response in seen:
        if response.request.method != "POST":
            continue
        message = json.loads(response.request.content)
        if isinstance(message, dict) and "method" not in message and "id" in message:
            answers.append(message)
    return answers


# -- metrics, logs and audit ----------------------------------------------------------------


async def test_every_action_is_counted_logged_without_the_secret_and_audited(
    tmp: Path, backend: PlantingBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    async with guarded(tmp, backend.url, guardrails("redact")) as gw:
        async with connected(gw) as client:
            await client.call_tool("leak", {})
        counts = await guardrail_counts(gw)
        audited = await audit_entries(gw)

    assert counts == {(detector, "redact"): float(PLANTED_PLACES) for detector in SECRETS}
    lines = guardrail_lines(caplog)
    assert len(lines) == PLANTED_PLACES * len(SECRETS)  # one line per action
    assert sorted(line["reason"] for line in lines) == sorted(list(SECRETS) * PLANTED_PLACES)
    assert {(line["decision"], line["target"], line["method"]) for line in lines} == {
        ("guardrail_redact", TARGET, "answer")
    }
    assert holds_no_secret(gateway_log_text(caplog))
    assert sorted(entry["reason"] for entry in audited) == sorted(list(SECRETS) * PLANTED_PLACES)
    assert {(entry["decision"], entry["target"]) for entry in audited} == {("guardrail_redact", TARGET)}
    assert holds_no_secret(json.dumps(audited))


async def test_blocks_and_dropped_notifications_are_counted_and_audited(
    tmp: Path, backend: PlantingBackend, caplog: pytest.LogCaptureFixture
) -> None:
    side = ClientSide()
    async with guarded(tmp, backend.url, guardrails("block")) as gw:
        async with connected(gw, side) as client:
            await client.call_tool("chatty", {}, progress_callback=side.on_progress)
        counts = await guardrail_counts(gw)
        audited = await audit_entries(gw)

    assert counts == {(detector, "block"): 2.0 for detector in SECRETS}  # the progress and the log message
    methods = {line["method"] for line in guardrail_lines(caplog)}
    assert methods == {"notifications/progress", "notifications/message"}
    assert {entry["decision"] for entry in audited} == {"guardrail_block"}
    assert holds_no_secret(gateway_log_text(caplog))


async def test_sampling_and_elicitation_decisions_are_audited_and_logged(
    tmp: Path, backend: PlantingBackend, caplog: pytest.LogCaptureFixture
) -> None:
    async with guarded(tmp, backend.url, guardrails(sampling="deny")) as gw:
        async with connected(gw) as client:
            await asked(client, "ask_model")
            await asked(client, "ask_user", {"field": "password"})
            await asked(client, "ask_user", {"field": "city"})
        audited = await audit_entries(gw)

    decisions = [(entry["method"], entry["decision"], entry["reason"]) for entry in audited]
    assert decisions == [
        ("sampling/createMessage", "guardrail_block", "sampling"),
        ("elicitation/create", "guardrail_block", "elicitation"),
        ("elicitation/create", "guardrail_allow", None),
    ]
    logged = [(line["method"], line["decision"]) for line in guardrail_lines(caplog)]
    assert logged == [(method, decision) for method, decision, _ in decisions]
