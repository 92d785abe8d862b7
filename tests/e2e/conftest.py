"""Fixtures that start real servers and agents; every test gets the logs when it fails."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Fleet

pytestmark = pytest.mark.e2e


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test's report carries the logs of every fleet it used."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call" or not report.failed:
        return
    for name, value in getattr(item, "funcargs", {}).items():
        candidates = value if isinstance(value, tuple) else (value,)
        for fleet in candidates:
            if isinstance(fleet, Fleet):
                report.sections.append((f"logs of {name}", fleet.logs()))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One server and three agents (two `role=web`, one `role=db`), shared by a module."""
    root = tmp_path_factory.mktemp("fleet")
    fleet = Fleet(root)
    try:
        fleet.start_server()
        fleet.add_agents(2, tags=["role=web", "env=e2e"])
        fleet.add_agents(1, tags=["role=db", "env=e2e"])
        yield fleet
    except BaseException:
        print(fleet.logs())  # noqa: T201 - shown by pytest only when the test fails
        raise
    finally:
        fleet.stop()


@pytest.fixture
def fresh_fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A server with no agents yet, for tests that kill and restart things."""
    fleet = Fleet(tmp_path)
    try:
        fleet.start_server()
        yield fleet
    except BaseException:
        print(fleet.logs())  # noqa: T201
        raise
    finally:
        fleet.stop()
