"""Example MCP server for agentgw, built with the MCP Python SDK.

Run one replica per port; `--name` tells replicas apart in tool answers so a
client can see which backend its session is pinned to:

    python examples/mcp_server.py --port 9001 --name docs-a
"""

import argparse
from collections import defaultdict

from mcp import SamplingMessage
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import TextContent
from pydantic import BaseModel


class Confirmation(BaseModel):
    confirmed: bool


def build_server(replica: str, log_level: str = "INFO") -> MCPServer:
    server = MCPServer(name="example-docs", instructions="Searches a tiny document store.", log_level=log_level)
    # Per-session state: proves that a session stays on one replica.
    calls_by_session: defaultdict[str, int] = defaultdict(int)
    documents = {
        "gateway": "agentgw proxies MCP sessions and pins each one to a backend replica.",
        "policy": "ToolPolicy decides which tools a caller may use.",
        "redis": "With Redis, every gateway replica sees every session.",
    }

    @server.tool()
    def search_documents(query: str) -> str:
        """Search the document store for a word."""
        hits = [text for key, text in documents.items() if query.lower() in (key + " " + text).lower()]
        return "\n".join(hits) or "no match"

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def whoami(ctx: Context) -> str:
        """Name the replica serving this session and count the session's calls to it."""
        session_id = _session_id(ctx)
        calls_by_session[session_id] += 1
        return f"{replica} {calls_by_session[session_id]}"

    @server.tool()
    async def summarize(text: str, ctx: Context) -> str:
        """Ask the client's model (MCP sampling) to summarize a text."""
        result = await ctx.session.create_message(
            messages=[SamplingMessage(role="user", content=TextContent(type="text", text=f"Summarize: {text}"))],
            max_tokens=64,
        )
        content = result.content
        return content.text if isinstance(content, TextContent) else str(content)

    @server.tool()
    async def confirm(question: str, ctx: Context) -> str:
        """Ask the user (MCP elicitation) to confirm something."""
        answer = await ctx.elicit(message=question, schema=Confirmation)
        if answer.action == "accept":
            return f"confirmed={answer.data.confirmed}"
        return answer.action

    return server


def _session_id(ctx: Context) -> str:
    request = ctx.request_context.request
    headers = getattr(request, "headers", None) or {}
    return headers.get("mcp-session-id", "stateless")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument("--name", default="docs-a", help="replica name shown by the whoami tool")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args()
    build_server(args.name, args.log_level).run(
        "streamable-http", host=args.host, port=args.port, streamable_http_path="/mcp"
    )


if __name__ == "__main__":
    main()
