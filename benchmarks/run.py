"""Run every benchmark script in this folder (``bench_*.py``) and print their figures.

Usage: ``python benchmarks/run.py [name ...]`` (names without ``bench_``/``.py`` select a subset).
Benchmarks print timings; they never assert on them.
"""

from __future__ import annotations

import runpy
import sys
import time
from pathlib import Path

here = Path(__file__).resolve().parent
selected = set(sys.argv[1:])
for script in sorted(here.glob("bench_*.py")):
    name = script.stem.removeprefix("bench_")
    if selected and name not in selected:
        continue
    print(f"\n=== {script.name} ===", flush=True)
    t0 = time.perf_counter()
    runpy.run_path(str(script), run_name="__main__")
    print(f"({script.name} took {time.perf_counter() - t0:.1f} s)", flush=True)
