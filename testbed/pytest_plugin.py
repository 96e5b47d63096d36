"""pytest plugin (registered through the pytest11 entry point): options shared by resilience suites."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("testbed")
    group.addoption("--testbed-seed", type=int, default=None, help="override the seed of every scenario run")


@pytest.fixture
def testbed_seed(request: pytest.FixtureRequest) -> int | None:
    """The seed given with --testbed-seed, or None to keep each scenario's own."""
    return request.config.getoption("--testbed-seed")
