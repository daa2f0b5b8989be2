"""`make chaos`: gateway replicas and Redis topologies failing under a steady load of MCP clients,
counting what the clients got (contract 17). Kept out of `tests/`, so `make test` never runs it."""
