"""An MCP server (SDK-built) whose every tool run leaves a line in a trace file.

A test that a call was refused reads the file: a refused call never ran.

    python tests/trace_server.py PORT TRACE_FILE
"""

from __future__ import annotations

import sys
from pathlib import Path

from mcp.server.mcpserver import MCPServer


def build_server(trace: Path) -> MCPServer:
    server = MCPServer(name="trace")

    def ran(name: str) -> str:
        with trace.open("a") as out:
            out.write(name + "\n")
        return f"{name} ran"

    @server.tool()
    def search_documents(query: str) -> str:
        """Search documents."""
        return ran("search_documents")

    @server.tool()
    def send_email(to: str, body: str) -> str:
        """Send an email."""
        return ran("send_email")

    @server.tool()
    def exec_shell(command: str) -> str:
        """Run a shell command."""
        return ran("exec_shell")

    @server.tool()
    def read_credentials() -> str:
        """Read stored credentials."""
        return ran("read_credentials")

    @server.tool()
    def get_secret_key() -> str:
        """Return a secret key."""
        return ran("get_secret_key")

    @server.tool()
    def add(a: int, b: int) -> str:
        """Add two integers."""
        return ran("add")

    @server.prompt()
    def greeting(name: str) -> str:
        """A greeting prompt."""
        ran("prompt:greeting")
        return f"Hello {name}"

    @server.resource("docs://readme")
    def readme() -> str:
        """The readme."""
        ran("resource:readme")
        return "readme"

    return server


if __name__ == "__main__":
    port, trace_file = int(sys.argv[1]), Path(sys.argv[2])
    build_server(trace_file).run("streamable-http", host="127.0.0.1", port=port, streamable_http_path="/mcp")
