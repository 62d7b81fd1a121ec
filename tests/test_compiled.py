"""The compiled build's module list (shared/compiled.py) against the source tree.

``scripts/test-compiled`` (run by CI) builds it and runs the SIP edge's tests on it; these
check what a plain install can: that setup.py will find every listed module's source, and that
a process tells rightly which of them it runs compiled.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from shared.compiled import MODULES, compiled_modules

ROOT = Path(__file__).resolve().parent.parent


def test_every_listed_module_has_its_source_where_setup_py_looks() -> None:
    missing = [name for name in MODULES if not (ROOT / (name.replace(".", "/") + ".py")).is_file()]
    assert missing == []
    assert len(set(MODULES)) == len(MODULES)


def test_a_process_says_which_listed_modules_it_runs_compiled() -> None:
    compiled = set(compiled_modules())
    for name in MODULES:
        path = importlib.import_module(name).__file__ or ""
        assert (name in compiled) == path.endswith(".so"), (name, path)
