"""The gateway's copy of MCP's revisions and header names is the SDK's: an SDK that adds a revision fails here."""

from __future__ import annotations

import subprocess
import sys

import mcp_types.version
from mcp.shared import inbound

from agentgw import mcp_headers


def test_protocol_revisions_are_the_sdks() -> None:
    assert mcp_headers.KNOWN_PROTOCOL_VERSIONS == mcp_types.version.KNOWN_PROTOCOL_VERSIONS
    assert mcp_headers.HANDSHAKE_PROTOCOL_VERSIONS == mcp_types.version.HANDSHAKE_PROTOCOL_VERSIONS
    assert mcp_headers.MODERN_PROTOCOL_VERSIONS == mcp_types.version.MODERN_PROTOCOL_VERSIONS


def test_header_names_are_the_sdks_lower_cased() -> None:
    assert mcp_headers.MCP_METHOD == inbound.MCP_METHOD_HEADER.lower()
    assert mcp_headers.MCP_NAME == inbound.MCP_NAME_HEADER.lower()
    assert mcp_headers.MCP_PROTOCOL_VERSION == inbound.MCP_PROTOCOL_VERSION_HEADER.lower()


def test_the_gateway_loads_no_sdk() -> None:
    """Each worker would carry the whole SDK (pydantic models, client, server) for a few strings."""
    code = "import sys, agentgw.app; print(sorted(m for m in sys.modules if m.split('.')[0] in ('mcp', 'mcp_types')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
