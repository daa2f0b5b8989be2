"""Every bad-input row of contract 5.5 and the Host/Origin rule of 5.6, over raw HTTP.

Each case asserts the status and JSON-RPC code, then that the gateway still serves.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support import (
    JSON_HEADERS,
    InProcessGateway,
    Process,
    gateway_in_thread,
    initialize_body,
    mcp_headers,
    mcp_target,
    raw_call,
    raw_request,
    raw_session,
    tool_text,
)

MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def gw(backends: list[Process], tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessGateway]:
    tmp = tmp_path_factory.mktemp("bad-input")
    config = {"server": {"max_body_bytes": MAX_BODY}, "mcp": {"targets": [mcp_target("docs", backends[0].port)]}}
    with gateway_in_thread(tmp, config) as running:
        yield running


@pytest.fixture(scope="module")
def session_id(gw: InProcessGateway) -> str:
    import asyncio

    return asyncio.run(raw_session(gw.port))


async def assert_still_serves(gw: InProcessGateway, session_id: str) -> None:
    health = await raw_request(gw.port, "GET", "/healthz", [("Host", f"127.0.0.1:{gw.port}")])
    assert health.status == 200
    assert tool_text(await raw_call(gw.port, session_id, "add", {"a": 2, "b": 2})) == "4"


def nested(depth: int) -> bytes:
    return (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":'
        + b"[" * depth
        + b"]" * depth
        + b"}}}"
    )


CALL_PREFIX = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":'
PARSE_ERRORS = {
    "not-json": b"{this is not json",
    "truncated": b'{"jsonrpc":"2.0","id":1,',
    "empty": b"",
    "bom": b"\xef\xbb\xbf" + initialize_body(),
    "utf16": initialize_body().decode().encode("utf-16"),
    "utf32": initialize_body().decode().encode("utf-32-le"),
    "latin1": '{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"caf\u00e9"}}'.encode("latin-1"),
    "raw-lone-surrogate": CALL_PREFIX + b'"\xed\xa0\x80"}}}',
    "escaped-lone-surrogate": CALL_PREFIX + b'"\\ud800"}}}',
    "nan": CALL_PREFIX + b"NaN}}}",
    "infinity": CALL_PREFIX + b"-Infinity}}}",
    "float-overflow": CALL_PREFIX + b"1e999}}}",
    "huge-integer": CALL_PREFIX + b"1" + b"0" * 400 + b"}}}",
}

INVALID_REQUESTS = {
    "bool-id": b'{"jsonrpc":"2.0","id":true,"method":"ping"}',
    "float-id": b'{"jsonrpc":"2.0","id":1.5,"method":"ping"}',
    "object-id": b'{"jsonrpc":"2.0","id":{},"method":"ping"}',
    "null-id": b'{"jsonrpc":"2.0","id":null,"method":"ping"}',
    "array-params": b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["add"]}',
    "string-params": b'{"jsonrpc":"2.0","id":1,"method":"ping","params":"x"}',
    "non-string-name": b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":42}}',
    "missing-name": b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}',
    "non-string-uri": b'{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":["x"]}}',
    "non-string-method": b'{"jsonrpc":"2.0","id":1,"method":7}',
    "no-jsonrpc-version": b'{"id":1,"method":"ping"}',
    "wrong-jsonrpc-version": b'{"jsonrpc":"1.0","id":1,"method":"ping"}',
    "scalar": b"42",
    "string": b'"tools/call"',
    "duplicate-top-level-key": b'{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call"}',
    "duplicate-nested-key": CALL_PREFIX + b'1,"a":2}}}',
    "duplicate-name-key": b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","name":"whoami"}}',
    "nesting-65": nested(65),
    "nesting-30000": nested(30_000),
    "empty-batch": b"[]",
    "batch-with-bad-element": b'[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":true,"method":"ping"}]',
    "result-and-error": b'{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"x"}}',
}


@pytest.mark.parametrize("body", PARSE_ERRORS.values(), ids=PARSE_ERRORS.keys())
async def test_unparseable_body_is_400_parse_error(gw: InProcessGateway, session_id: str, body: bytes) -> None:
    headers = mcp_headers(gw.port, ("Mcp-Session-Id", session_id))
    response = await raw_request(gw.port, "POST", "/mcp/v1", headers, body)
    assert response.status == 400
    assert response.json()["error"]["code"] == -32700
    await assert_still_serves(gw, session_id)


@pytest.mark.parametrize("body", INVALID_REQUESTS.values(), ids=INVALID_REQUESTS.keys())
async def test_non_jsonrpc_body_is_400_invalid_request(gw: InProcessGateway, session_id: str, body: bytes) -> None:
    headers = mcp_headers(gw.port, ("Mcp-Session-Id", session_id))
    response = await raw_request(gw.port, "POST", "/mcp/v1", headers, body)
    assert response.status == 400
    assert response.json()["error"]["code"] == -32600
    await assert_still_serves(gw, session_id)


async def test_nesting_of_64_is_accepted(gw: InProcessGateway, session_id: str) -> None:
    # 64 levels in all: message, params, arguments and 61 arrays; the backend rejects the argument type.
    headers = mcp_headers(gw.port, ("Mcp-Session-Id", session_id))
    response = await raw_request(gw.port, "POST", "/mcp/v1", headers, nested(61))
    assert response.status == 200


@pytest.mark.parametrize("size", [MAX_BODY, 2 * 1024 * 1024])
async def test_body_over_the_limit_is_413(gw: InProcessGateway, session_id: str, size: int) -> None:
    body = CALL_PREFIX + b'"' + b"x" * size + b'"}}}'
    response = await raw_request(gw.port, "POST", "/mcp/v1", mcp_headers(gw.port, ("Mcp-Session-Id", session_id)), body)
    assert response.status == 413
    await assert_still_serves(gw, session_id)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "", "application/jsonx"])
async def test_wrong_content_type_is_415(gw: InProcessGateway, session_id: str, content_type: str) -> None:
    headers = [("Host", f"127.0.0.1:{gw.port}"), ("Accept", "application/json, text/event-stream")]
    if content_type:
        headers.append(("Content-Type", content_type))
    response = await raw_request(gw.port, "POST", "/mcp/v1", headers, initialize_body())
    assert response.status == 415
    await assert_still_serves(gw, session_id)


@pytest.mark.parametrize("accept", ["text/html", "application/xml", "image/*"])
async def test_wrong_accept_is_406(gw: InProcessGateway, session_id: str, accept: str) -> None:
    headers = [("Host", f"127.0.0.1:{gw.port}"), ("Content-Type", "application/json"), ("Accept", accept)]
    response = await raw_request(gw.port, "POST", "/mcp/v1", headers, initialize_body())
    assert response.status == 406
    get = await raw_request(
        gw.port,
        "GET",
        "/mcp/v1",
        [("Host", f"127.0.0.1:{gw.port}"), ("Accept", accept), ("Mcp-Session-Id", session_id)],
    )
    assert get.status == 406
    await assert_still_serves(gw, session_id)


@pytest.mark.parametrize("version", ["1999-01-01", "2025-13-45", "latest", ""])
async def test_unsupported_protocol_version_is_400(gw: InProcessGateway, session_id: str, version: str) -> None:
    headers = mcp_headers(gw.port, ("Mcp-Session-Id", session_id), ("MCP-Protocol-Version", version))
    response = await raw_request(gw.port, "POST", "/mcp/v1", headers, b'{"jsonrpc":"2.0","id":1,"method":"ping"}')
    assert response.status == 400
    await assert_still_serves(gw, session_id)


async def test_unsupported_method_is_405(gw: InProcessGateway, session_id: str) -> None:
    response = await raw_request(gw.port, "PUT", "/mcp/v1", mcp_headers(gw.port), initialize_body())
    assert response.status == 405
    await assert_still_serves(gw, session_id)


@pytest.mark.parametrize(
    "host", ["evil.example.com", "evil.example.com:8080", "127.0.0.1.nip.io", "localhost.evil.com"]
)
async def test_foreign_host_is_403(gw: InProcessGateway, session_id: str, host: str) -> None:
    response = await raw_request(gw.port, "POST", "/mcp/v1", [("Host", host), *JSON_HEADERS], initialize_body())
    assert response.status == 403
    await assert_still_serves(gw, session_id)


@pytest.mark.parametrize("origin", ["http://evil.example.com", "https://attacker.test:8080", "null", "file://"])
async def test_foreign_origin_is_403(gw: InProcessGateway, session_id: str, origin: str) -> None:
    headers = mcp_headers(gw.port, ("Origin", origin))
    response = await raw_request(gw.port, "POST", "/mcp/v1", headers, initialize_body())
    assert response.status == 403
    await assert_still_serves(gw, session_id)


@pytest.mark.parametrize("host", ["localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}", "localhost"])
async def test_loopback_host_and_same_host_origin_are_served(gw: InProcessGateway, host: str) -> None:
    host = host.format(port=gw.port)
    headers = [("Host", host), ("Origin", f"http://{host}"), *JSON_HEADERS]
    response = await raw_request(gw.port, "POST", "/mcp/v1", headers, initialize_body())
    assert response.status == 200
