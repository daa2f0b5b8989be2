"""What the chaos scenarios share: the example backends and each Redis topology, started once for
the whole run, and the figures, printed after each scenario and once more, together, at the end."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from chaos.load import Figures, table
from tests.redis_topologies import Cluster, RedisNode, SentinelSet, redis_cluster, sentinel_set, single_redis_with_aof
from tests.support import Process, mcp_backend, start_all

FIGURES = pytest.StashKey[list[Figures]]()


@pytest.fixture(scope="session")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Process]]:
    """Two replicas of the example MCP server; each gateway session is pinned to one of them."""
    logs = tmp_path_factory.mktemp("backends")
    replicas = start_all(*(mcp_backend(name, logs / f"{name}.log") for name in ("replica-a", "replica-b")))
    yield replicas
    for replica in replicas:
        replica.stop()


@pytest.fixture(scope="session")
def aof_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisNode]:
    with single_redis_with_aof(tmp_path_factory.mktemp("aof")) as node:
        yield node


@pytest.fixture(scope="session")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    with sentinel_set(tmp_path_factory.mktemp("sentinel")) as topology:
        yield topology


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as topology:
        yield topology


@pytest.fixture
def record(pytestconfig: pytest.Config) -> Callable[[Figures], None]:
    """Print a scenario's figures (and what went wrong, if anything) and keep them for the summary."""

    def print_figures(figures: Figures) -> None:
        print(f"\n{table([figures])}")
        for problem in figures.problems:
            print(f"  {problem}")
        pytestconfig.stash.setdefault(FIGURES, []).append(figures)

    return print_figures


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    rows = config.stash.get(FIGURES, [])
    if rows:
        terminalreporter.section("chaos figures")
        terminalreporter.write_line(table(rows))
