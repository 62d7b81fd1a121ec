"""setuptools' build backend, asking for mypy too when ``IMSTACK_COMPILE=1`` (setup.py).

So ``IMSTACK_COMPILE=1 pip install .`` builds the compiled variant in pip's isolated build
environment, and a plain ``pip install .`` downloads nothing more than before.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from pathlib import Path

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (the backend's other hooks, unchanged)


def _compile_requires() -> list[str]:
    """mypy, and what it needs to type the code as ``scripts/check`` does (pyproject's
    [tool.mypy] loads the pydantic plugin and follows the imports into the dependencies)."""
    project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
    return ["mypy>=1.10", "asyncpg-stubs>=0.29", *project["dependencies"]]


Hook = Callable[[dict[str, object] | None], list[str]]


def _requires(hook: Hook, config_settings: dict[str, object] | None) -> list[str]:
    # setuptools runs setup.py to find its requirements: before mypy is there, so without
    # the compiled build, which is then added to what it asks for.
    compile_ = os.environ.pop("IMSTACK_COMPILE", None)
    try:
        requires = hook(config_settings)
    finally:
        if compile_ is not None:
            os.environ["IMSTACK_COMPILE"] = compile_
    return [*requires, *(_compile_requires() if compile_ == "1" else [])]


def get_requires_for_build_wheel(config_settings: dict[str, object] | None = None) -> list[str]:
    return _requires(_setuptools.get_requires_for_build_wheel, config_settings)


def get_requires_for_build_sdist(config_settings: dict[str, object] | None = None) -> list[str]:
    return _requires(_setuptools.get_requires_for_build_sdist, config_settings)
