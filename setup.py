"""Build hook: with ``IMSTACK_COMPILE=1``, the SIP edge's hot modules are compiled with mypyc.

``pip install .`` (and ``-e``) installs pure Python, as always. ``scripts/compile`` and the
Dockerfile build the compiled variant: the same source files turned into C extensions, which
Python imports instead of the ``.py`` beside them. It needs mypy, setuptools >= 77 and a C
compiler at build time, nothing at run time. ``docs/performance.md`` says what it gains.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shared.compiled import MODULES

ext_modules = []
if os.environ.get("IMSTACK_COMPILE") == "1":
    from mypyc.build import mypycify

    ext_modules = mypycify(
        [name.replace(".", "/") + ".py" for name in MODULES], opt_level="3", multi_file=True
    )

setup(ext_modules=ext_modules)
