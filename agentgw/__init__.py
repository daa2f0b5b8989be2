"""agentgw: a stateful MCP/A2A gateway."""

__version__ = "0.1.0"
