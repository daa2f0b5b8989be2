"""MCP's protocol revisions and HTTP header names, lower-case as the gateway reads and writes them.

The same values as the MCP SDK's (`mcp_types.version`, `mcp.shared.inbound`), which
`tests/test_mcp_headers.py` checks: importing the SDK for them would load all of it
(pydantic models, client and server) into every worker, some 30 MiB and most of a
second of start-up, for a few strings.
"""

# Every released revision, oldest to newest; those reached by the `initialize` handshake; and
# the stateless ones, with the per-request envelope.
KNOWN_PROTOCOL_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28")
HANDSHAKE_PROTOCOL_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
MODERN_PROTOCOL_VERSIONS = ("2026-07-28",)

MCP_METHOD = "mcp-method"
MCP_NAME = "mcp-name"
MCP_PROTOCOL_VERSION = "mcp-protocol-version"
MCP_SESSION_ID = "mcp-session-id"
X_MCP_SESSION_ID = "x-mcp-session-id"
LAST_EVENT_ID = "last-event-id"
MCP_PARAM_PREFIX = "mcp-param-"
