"""What the chaos scenarios share: the example backends and each Redis topology, started once for
the whole run, and the figures, printed after each scenario and once more, together, at the end."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from chaos.load import Figures, table
from tests.conftest import backends as backends  # the tests' two example MCP replicas, for the whole run
from tests.redis_topologies import RedisNode, single_redis_with_aof, started_cluster, started_sentinels

FIGURES = pytest.StashKey[list[Figures]]()


@pytest.fixture(scope="session")
def aof_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisNode]:
    with single_redis_with_aof(tmp_path_factory.mktemp("aof")) as node:
        yield node


sentinels = pytest.fixture(started_sentinels, scope="session", name="sentinels")
cluster = pytest.fixture(started_cluster, scope="session", name="cluster")


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
