"""Garbage-collection pauses of an imstack process, for the benchmarks' tail latencies.

Put this folder on PYTHONPATH when running a benchmark that starts imstack with this
virtualenv's interpreter (not with ``--python``, which sets PYTHONPATH itself)::

    PYTHONPATH=bench/gc_probe .venv/bin/python bench/sip_relay.py --tests rates --rates 1000

Every ``imstack serve`` process then writes, when it exits, ``/tmp/imstack-gc.<pid>``: the
number of collections per generation, the objects they found unreachable (garbage in
reference cycles) and their total pause, and the 20 longest pauses over 2 ms as
(milliseconds, generation, objects collected). With ``GC_PROBE_SIZES=1`` it also
lists the number of objects in each generation as each collection starts (slow: a probe).
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import time
from typing import Any

if "serve" in sys.argv:
    _started: dict[int, float] = {}
    _long: list[tuple[float, int, int]] = []
    _counts = [0, 0, 0]
    _SIZES = os.environ.get("GC_PROBE_SIZES") == "1"
    _sizes: list[tuple[int, ...]] = []
    _collected = [0, 0, 0]
    _paused = [0.0, 0.0, 0.0]

    def _callback(phase: str, info: dict[str, Any]) -> None:
        generation = int(info["generation"])
        if phase == "start":
            if _SIZES:
                _sizes.append((generation, *(len(gc.get_objects(g)) for g in range(3))))
            _started[generation] = time.perf_counter()
            return
        pause = time.perf_counter() - _started.get(generation, time.perf_counter())
        _counts[generation] += 1
        _collected[generation] += int(info.get("collected", 0))
        _paused[generation] += pause
        if pause > 0.002:
            _long.append((round(pause * 1000, 1), generation, int(info.get("collected", 0))))

    def _report() -> None:
        with open(f"/tmp/imstack-gc.{os.getpid()}", "w") as out:
            out.write(f"{' '.join(sys.argv)}\ncollections by generation {_counts}\n")
            out.write(f"objects collected (in cycles) by generation {_collected}\n")
            paused = [round(p * 1000, 1) for p in _paused]
            out.write(f"total pause ms by generation {paused}\n")
            if _sizes:
                out.write(f"generation sizes at collection start (gen, g0, g1, g2): {_sizes}\n")
            out.write(
                f"pauses over 2 ms: {len(_long)}, longest {sorted(_long, reverse=True)[:20]}\n"
            )

    gc.callbacks.append(_callback)
    atexit.register(_report)
