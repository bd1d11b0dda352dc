"""The book's benchmark: lib's softmax attention against torch's fused kernel, and memory at N = 10^5.

``make bench`` (``python benchmarks/run.py``) measures, in one run:

1. the time ratio ``lib / sdpa(4-D)``: :func:`lib.attention.softmax_attention` called with 2-D
   ``(N, d)``, 3-D ``(1, N, d)`` and 4-D ``(1, 1, N, d)`` inputs, against
   :func:`torch.nn.functional.scaled_dot_product_attention` on the 4-D layout (the CPU's tiled
   kernel), for N in {1000, 4000, 16000}, d in {2, 8, 64}, float32 and float64 (self-attention,
   values of dimension d). Each entry is the best of ``--repeats`` interleaved calls;
2. float64 softmax and causal attention at N = 10^5, d = 8, each in a fresh subprocess, with its
   wall time and peak resident memory (``VmHWM`` of ``/proc/self/status``, which counts torch's
   own allocations; the interpreter and torch account for a few hundred MB of it).

It prints a Markdown table and writes it to ``benchmarks/results.md``. Timings are never asserted.

Options: ``--small`` (N in {1000, 4000}, d in {2, 8}: a quick look while developing),
``--threads T`` (torch threads, default 1), ``--repeats R`` (default 3), ``--no-memory``, ``--out``,
and names of the other scripts in this folder to run afterwards (``bench_NAME.py``; ``all`` for
every one of them).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import runpy
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

MEMORY_SCRIPT = r"""
import json, sys, time, torch
sys.path.insert(0, {root!r})
from lib.attention import softmax_attention
torch.set_num_threads({threads})
g = torch.Generator().manual_seed(0)
n, d = {n}, {d}
q, k, v = (torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(3))
t0 = time.perf_counter()
out = softmax_attention(q, k, v, causal={causal})
dt = time.perf_counter() - t0
ok = bool(torch.isfinite(out).all())
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps(dict(seconds=dt, peak_mb=int(hwm) / 1024, finite=ok)))
"""


def best_ratio(fn_lib, fn_ref, repeats: int) -> tuple[float, float]:
    """Best-of-``repeats`` seconds of two callables, interleaved (so load drifts hit both); fast
    calls are repeated more (up to about half a second each, at most 50 times)."""
    t0 = time.perf_counter()
    fn_lib(), fn_ref()  # warm-up
    once = (time.perf_counter() - t0) / 2
    repeats = max(repeats, min(50, int(0.5 / max(once, 1e-6))))
    tl, tr = math.inf, math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn_lib()
        tl = min(tl, time.perf_counter() - t0)
        t0 = time.perf_counter()
        fn_ref()
        tr = min(tr, time.perf_counter() - t0)
    return tl, tr


def grid(ns, ds, repeats: int) -> list[dict]:
    import torch
    import torch.nn.functional as F

    from lib.attention import softmax_attention

    rows = []
    for dtype in (torch.float32, torch.float64):
        for n in ns:
            for d in ds:
                g = torch.Generator().manual_seed(0)
                q, k, v = (torch.randn(1, 1, n, d, generator=g, dtype=dtype) for _ in range(3))
                scale = 1.0 / math.sqrt(d)
                row = {"dtype": str(dtype).removeprefix("torch."), "n": n, "d": d}

                def ref(q=q, k=k, v=v, scale=scale):
                    return F.scaled_dot_product_attention(q, k, v, scale=scale)

                for rank in (2, 3, 4):
                    qr, kr, vr = (x.reshape(x.shape[4 - rank:]) for x in (q, k, v))
                    out = softmax_attention(qr, kr, vr)
                    err = float((out.reshape(q.shape) - ref()).abs().max())
                    tl, tr = best_ratio(lambda qr=qr, kr=kr, vr=vr: softmax_attention(qr, kr, vr), ref, repeats)
                    row[f"r{rank}"] = tl / tr
                    row[f"t{rank}"] = tl
                    row["sdpa"] = min(row.get("sdpa", math.inf), tr)
                    row["err"] = max(row.get("err", 0.0), err)
                rows.append(row)
                print(f"{row['dtype']:>8} N={n:>6} d={d:>3}  sdpa {1e3 * row['sdpa']:9.1f} ms  "
                      f"lib/sdpa 2-D {row['r2']:.2f}  3-D {row['r3']:.2f}  4-D {row['r4']:.2f}", flush=True)
    return rows


def memory(n: int, d: int, threads: int) -> list[dict]:
    rows = []
    for causal in (False, True):
        code = MEMORY_SCRIPT.format(root=str(ROOT), threads=threads, n=n, d=d, causal=causal)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        if res.returncode != 0:
            rows.append({"causal": causal, "error": res.stderr.strip().splitlines()[-1:]})
        else:
            rows.append({"causal": causal, **json.loads(res.stdout.strip().splitlines()[-1])})
        print(f"float64 N={n} d={d} causal={causal}: {rows[-1]}", flush=True)
    return rows


def markdown(rows: list[dict], mem: list[dict], args, n_mem: int, d_mem: int) -> str:
    import torch

    header = (f"torch {torch.__version__}, {args.threads} CPU thread(s), "
              f"{platform.processor() or platform.machine()}, best of at least {args.repeats} "
              f"interleaved calls; written by `benchmarks/run.py`{' --small' if args.small else ''}.")
    lines = [
        "# Benchmark: lib softmax attention against sdpa (4-D)",
        "",
        header,
        "",
        ("Ratio = time of `lib.attention.softmax_attention` on 2-D `(N, d)`, 3-D `(1, N, d)` and 4-D "
         "`(1, 1, N, d)` input / time of `scaled_dot_product_attention` on `(1, 1, N, d)`; "
         "max |diff| is the largest deviation of lib's output from sdpa's."),
        "",
        "| dtype | N | d | sdpa 4-D [ms] | lib/sdpa 2-D | lib/sdpa 3-D | lib/sdpa 4-D | max abs diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['dtype']} | {r['n']} | {r['d']} | {1e3 * r['sdpa']:.1f} | {r['r2']:.2f} | "
                     f"{r['r3']:.2f} | {r['r4']:.2f} | {r['err']:.1e} |")
    big = [r for r in rows if r["n"] >= 4000]
    if big:
        worst = max(max(r["r2"], r["r3"], r["r4"]) for r in big)
        over = sum(max(r["r2"], r["r3"], r["r4"]) > 1.1 for r in big)
        lines += ["", f"N >= 4000: worst ratio {worst:.2f}; {over} of {len(big)} rows have a ratio above 1.1."]
    if mem:
        lines += ["", f"## float64, N = {n_mem}, d = {d_mem} (2-D input, fresh process each)", "",
                  "| attention | wall time [s] | peak RSS [MB] | finite | within 4 GB |", "|---|---:|---:|---|---|"]
        for m in mem:
            name = "causal" if m["causal"] else "softmax"
            if "error" in m:
                lines.append(f"| {name} | failed: {m['error']} | | | no |")
            else:
                lines.append(f"| {name} | {m['seconds']:.1f} | {m['peak_mb']:.0f} | {m['finite']} | "
                             f"{'yes' if m['peak_mb'] <= 4096 else 'no'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("scripts", nargs="*", help="other bench_NAME.py scripts to run afterwards ('all': every one)")
    p.add_argument("--small", action="store_true", help="small grid: N in {1000, 4000}, d in {2, 8}")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-memory", action="store_true", help="skip the N = 10^5 runs")
    p.add_argument("--memory-n", type=int, default=100_000)
    p.add_argument("--out", type=Path, default=HERE / "results.md")
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    ns, ds = ((1000, 4000), (2, 8)) if args.small else ((1000, 4000, 16000), (2, 8, 64))
    t0 = time.perf_counter()
    rows = grid(ns, ds, args.repeats)
    mem = [] if args.no_memory else memory(args.memory_n, 8, args.threads)
    text = markdown(rows, mem, args, args.memory_n, 8)
    print("\n" + text)
    args.out.write_text(text, encoding="utf-8")
    print(f"(table written to {args.out}; {time.perf_counter() - t0:.0f} s)")

    selected = set(args.scripts)
    for script in sorted(HERE.glob("bench_*.py")):
        name = script.stem.removeprefix("bench_")
        if not selected or ("all" not in selected and name not in selected):
            continue
        print(f"\n=== {script.name} ===", flush=True)
        t1 = time.perf_counter()
        runpy.run_path(str(script), run_name="__main__")
        print(f"({script.name} took {time.perf_counter() - t1:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
