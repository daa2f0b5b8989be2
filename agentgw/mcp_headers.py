"""MCP's HTTP header names, lower-case as the gateway reads and writes them, for both sides."""

from mcp.shared.inbound import MCP_METHOD_HEADER as MCP_METHOD
from mcp.shared.inbound import MCP_NAME_HEADER as MCP_NAME
from mcp.shared.inbound import MCP_PROTOCOL_VERSION_HEADER as MCP_PROTOCOL_VERSION

MCP_SESSION_ID = "mcp-session-id"
X_MCP_SESSION_ID = "x-mcp-session-id"
LAST_EVENT_ID = "last-event-id"
MCP_PARAM_PREFIX = "mcp-param-"

__all__ = [
    "LAST_EVENT_ID",
    "MCP_METHOD",
    "MCP_NAME",
    "MCP_PARAM_PREFIX",
    "MCP_PROTOCOL_VERSION",
    "MCP_SESSION_ID",
    "X_MCP_SESSION_ID",
]
