"""One compose topology (PostgreSQL + migrate + relay, msilo, imc, api as processes) shared by
the stack tests; each test starts with every part running as compose configures it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.stack.topology import SERVICES, Stack

REPORT = "stack-audit.json"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash.setdefault(FAILED, []).append(report.when)
    return report


FAILED = pytest.StashKey[list[str]]()


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = Stack(tmp_path_factory.mktemp("stack"))
    try:
        asyncio.run(running.up())
        yield running
    except BaseException:
        for name in ("migrate", *SERVICES):
            print(f"--- {name} log (tail)\n{running.tail(name)}")
        raise
    finally:
        codes = running.down()
        print(f"stack down, exit codes {codes}")


@pytest.fixture(autouse=True)
def stack_ready(request: pytest.FixtureRequest, stack: Stack) -> Iterator[None]:
    """Restore the topology before each test; print each service's log tail if it failed."""
    asyncio.run(stack.ensure_up())
    yield
    if request.node.stash.get(FAILED, []):
        for name in ("migrate", *SERVICES):
            print(f"--- {name} log (tail)\n{stack.tail(name)}")


@pytest.fixture(scope="package")
def audit_report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """The audit counts of every test, written to ``<basetemp>/stack-audit.json``."""
    found: dict[str, object] = {}
    yield found
    path = Path(tmp_path_factory.getbasetemp()) / REPORT
    path.write_text(json.dumps(found, indent=2, sort_keys=True))
    print(f"stack audit counts in {path}")
