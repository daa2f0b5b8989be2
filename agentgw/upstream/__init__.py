"""What the gateway speaks to: MCP backends (and later A2A agents and LLM providers)."""
