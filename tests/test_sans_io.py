"""The protocol cores stay sans-IO: no sockets, no event loop, no clock, no database."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORES = sorted(
    [*ROOT.glob("shared/sip/**/*.py"), *ROOT.glob("shared/msrp/**/*.py"), ROOT / "shared/digest.py"]
)
FORBIDDEN = {
    "asyncio",
    "socket",
    "selectors",
    "ssl",
    "time",
    "threading",
    "subprocess",
    "logging",
    "asyncpg",
    "uvloop",
    "shared.db",
    "shared.config",
    "services",
}


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", CORES, ids=lambda p: str(p.relative_to(ROOT)))
def test_protocol_core_imports_no_io(path: Path) -> None:
    bad = {
        name
        for name in imported_modules(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    }
    assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_cores_exist() -> None:
    assert any(p.parent.name == "sip" for p in CORES)
    assert any(p.parent.name == "msrp" for p in CORES)
