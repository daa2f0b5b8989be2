"""Where MCP sessions live: a small protocol with memory and Redis implementations."""
