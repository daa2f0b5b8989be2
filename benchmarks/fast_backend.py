"""A minimal MCP backend that answers in microseconds, so a benchmark measures the gateway.

It speaks just enough Streamable HTTP for `initialize`, `notifications/*`,
`tools/list` and `tools/call`, with JSON responses over keep-alive HTTP/1.1 on the
raw asyncio protocol of benchmarks/fast_http.py.

    python benchmarks/fast_backend.py PORT [--text-tools]

With --text-tools it also lists two tools whose result is a 4 KiB text
(benchmarks/guardrails.py calls them): `document`, prose and JSON-like records
with no secret in them, and `leaky_document`, the same text with one
GitHub-style token in its middle. Without it, `add` is the only tool listed.
"""

from __future__ import annotations

import json
import secrets
import sys

from fast_http import response, serve

ADD_SCHEMA = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
}
TOOLS = {"tools": [{"name": "add", "description": "Add two integers", "inputSchema": ADD_SCHEMA}]}

TEXT_BYTES = 4096
# What a document-search tool answers: a few paragraphs, then the matching records one per line.
_PROSE = (
    "The March close ran two days late because the export job for the billing ledger stalled on a schema "
    "change. The team re-ran it by hand, added a check that stops the job before it writes anything when a "
    "column is missing, and moved the run to 02:30 so it no longer overlaps the backup window. Finance signed "
    "off on the corrected figures on the 4th; the variance against the forecast was 1.8%, inside the 2.5% the "
    "board asked for.\n\n"
    "Open questions for the April review: whether the EU region keeps its own ledger or joins the shared one "
    "(the latency budget says yes, the audit team says not before the retention rules are settled), who owns "
    "the dashboard once the contractor leaves, and how long raw exports are kept. Nobody has asked for more "
    "than 90 days so far, and storage for 90 days costs about as much as one engineer's coffee.\n\n"
)
_RECORD_TITLES = (
    "Ledger export runbook",
    "Close calendar 2026",
    "Forecast variance notes",
    "Retention draft v3",
    "EU region proposal",
    "Dashboard handover",
    "Backup window change",
    "Schema migration log",
)


def _records() -> str:
    lines = []
    for number, title in enumerate(_RECORD_TITLES):
        record = {
            "id": 1040 + number,
            "title": title,
            "owner": ("team-finance", "team-ops", "team-data")[number % 3],
            "updated": f"2026-03-{10 + number:02d}T09:{number * 7:02d}:00Z",
            "pages": 3 + number * 2,
            "tags": ["billing", "export", "q1"][: 1 + number % 3],
            "summary": f"{title}: revised after the March close, reviewed by two approvers.",
        }
        lines.append(json.dumps(record))
    return "\n".join(lines) + "\n"


def _document() -> str:
    """TEXT_BYTES of ASCII: the prose and the records, again until there is enough, cut to size."""
    one = _PROSE + _records()
    return (one * (TEXT_BYTES // len(one) + 1))[:TEXT_BYTES]


DOCUMENT = _document()
# Assembled from harmless parts, so that no file holds anything a secret scanner takes for a token.
PLANTED_SECRET = "ghp" + "_" + "Q7rX2m" * 6
_PLANTED = f" deploy key {PLANTED_SECRET} "
LEAKY_DOCUMENT = DOCUMENT[: TEXT_BYTES // 2] + _PLANTED + DOCUMENT[TEXT_BYTES // 2 + len(_PLANTED) :]
TEXT_RESULTS = {"document": DOCUMENT, "leaky_document": LEAKY_DOCUMENT}
# Any arguments are accepted: wrk's script sends the same ones whatever the tool.
_TEXT_TOOLS = [
    {"name": name, "description": "Fetch the matching documents", "inputSchema": {"type": "object"}}
    for name in TEXT_RESULTS
]
TOOLS_WITH_TEXT = {"tools": TOOLS["tools"] + _TEXT_TOOLS}

ACCEPTED = response(b"202 Accepted", b"")
METHOD_NOT_ALLOWED = response(b"405 Method Not Allowed", b"")


def answer(request_line: bytes, body: bytes) -> bytes:
    """The response to one request: a JSON-RPC message is POSTed, anything else is refused."""
    return _answer(request_line, body, TOOLS)


def answer_with_text_tools(request_line: bytes, body: bytes) -> bytes:
    """As `answer`, with the text tools listed too."""
    return _answer(request_line, body, TOOLS_WITH_TEXT)


def _answer(request_line: bytes, body: bytes, listed: object) -> bytes:
    if request_line[:4].lower() != b"post":
        return METHOD_NOT_ALLOWED
    message = json.loads(body)
    method = message.get("method")
    if "id" not in message:
        return ACCEPTED
    result: object
    headers = b""
    if method == "initialize":
        result = {
            "protocolVersion": message["params"].get("protocolVersion", "2025-11-25"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "fast", "version": "1"},
        }
        headers = b"mcp-session-id: " + secrets.token_hex(16).encode() + b"\r\n"
    elif method == "tools/list":
        result = listed
    else:
        text = TEXT_RESULTS.get(message.get("params", {}).get("name"), "42")
        result = {"content": [{"type": "text", "text": text}], "isError": False}
    return response(b"200 OK", json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}).encode(), headers)


if __name__ == "__main__":
    serve(answer_with_text_tools if "--text-tools" in sys.argv[2:] else answer, int(sys.argv[1]))
