"""Example MCP server over stdio, built with the MCP Python SDK: what `agentgw bridge` serves.

    agentgw bridge --listen 127.0.0.1:9101 -- python examples/stdio_server.py

Besides ordinary tools, a prompt and a resource, it has the tools a test of a
stdio backend needs: one naming the environment it was given, one reporting
progress, one asking the client's model (sampling), one writing to stderr, one
writing a line that is not JSON-RPC to its stdout, and one that makes it exit.
"""

import json
import os
import sys

import anyio
from mcp import SamplingMessage
from mcp.server.mcpserver import Context, MCPServer
from mcp.types import TextContent

# The SDK points fd 1 at stderr while it serves (stray prints must not reach the wire);
# a copy made before that still reaches the client, for the tool that writes garbage there.
_wire = os.dup(1)


def build_server() -> MCPServer:
    server = MCPServer(name="example-stdio", instructions="Tools for trying a stdio backend.", log_level="WARNING")

    @server.tool()
    def echo(text: str) -> str:
        """Answer the text unchanged."""
        return text

    @server.tool()
    def pid() -> int:
        """The server's process id: each MCP session through the bridge has its own process."""
        return os.getpid()

    @server.tool()
    def env_names() -> str:
        """The names (never the values) of the server's environment variables, as a JSON list."""
        return json.dumps(sorted(os.environ))

    @server.tool()
    def env_has(name: str) -> bool:
        """Whether the environment variable `name` is set."""
        return name in os.environ

    @server.tool()
    def env_value(name: str) -> str:
        """The value of an environment variable the bridge was told to pass (`--env`)."""
        return os.environ.get(name, "")

    @server.tool()
    async def slow_progress(steps: int, ctx: Context) -> str:
        """Report progress `steps` times, a little apart, then answer."""
        for step in range(1, steps + 1):
            await ctx.report_progress(step, steps, f"step {step} of {steps}")
            await anyio.sleep(0.02)
        return f"done after {steps} steps"

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
    async def announce_tools_changed(ctx: Context) -> str:
        """Send notifications/tools/list_changed, which travels on the session's GET stream."""
        await ctx.session.send_tool_list_changed()
        return "announced"

    @server.tool()
    def complain(text: str) -> str:
        """Write a line to stderr, which the gateway logs."""
        print(text, file=sys.stderr, flush=True)
        return "written to stderr"

    @server.tool()
    def garbage() -> str:
        """Write a line that is not JSON-RPC to stdout, which the gateway logs and drops."""
        os.write(_wire, b"this line is not JSON-RPC\n")
        return "garbage written"

    @server.tool()
    def crash(code: int = 3) -> str:
        """Exit at once, without answering."""
        os._exit(code)

    @server.prompt()
    def review(code: str) -> str:
        """Ask for a review of some code."""
        return f"Please review this code:\n{code}"

    @server.resource("note://greeting", mime_type="text/plain")
    def greeting() -> str:
        """A short note."""
        return "hello from a stdio server"

    return server


if __name__ == "__main__":
    build_server().run("stdio")
