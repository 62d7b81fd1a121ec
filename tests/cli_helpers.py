"""Running the installed ``imstack`` console script as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

IMSTACK = str(Path(sys.executable).parent / "imstack")


def imstack_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMSTACK_")}
    env.update(settings)
    return env


def run_imstack(
    *args: str, env: dict[str, str], stdin: str | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [IMSTACK, *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=None if stdin is not None else subprocess.DEVNULL,
    )
