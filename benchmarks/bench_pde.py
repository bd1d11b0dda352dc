"""Benchmark (chapter 3): one RK4 step of the softmax particle system, in tokens x steps per second.

Three ways to evaluate the velocity field Gamma(x_i) = sum_j softmax_j(<Q x_i, K x_j>) V x_j:
  lib    -- lib.pde.particle_velocity (lib.attention.softmax_attention -> scaled_dot_product_attention,
            query chunks of 8192 rows so that N = 10^5 fits on a GPU);
  plain  -- torch.softmax(q @ k.T) @ v, in the same row chunks;
  sdpa   -- torch.nn.functional.scaled_dot_product_attention called directly, unchunked (may run out
            of memory for large N on a GPU: reported as "oom").
CPU always; CUDA when torch sees a GPU. Prints a table; no assertions.
Run: python benchmarks/bench_pde.py  (or python benchmarks/run.py for every benchmark).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from lib import pde

CHUNK = 8192


def _plain(x, Q, K, V):
    q, k, v = x @ Q.T, x @ K.T, x @ V.T
    outs = [torch.softmax(q[s:s + CHUNK] @ k.T, -1) @ v for s in range(0, x.shape[0], CHUNK)]
    return torch.cat(outs)


def _sdpa(x, Q, K, V):
    return F.scaled_dot_product_attention(x @ Q.T, x @ K.T, x @ V.T, scale=1.0)


def _lib(x, Q, K, V):
    return pde.particle_velocity(x, Q=Q, K=K, V=V, chunk_size=CHUNK)


def _rk4_step(field, x, Q, K, V, h=0.1):
    f = lambda t, z: field(z, Q, K, V)
    return pde.rk4(f, x, t1=h, n_steps=1)


def bench(device: str, n: int, dtype: torch.dtype, d: int = 2, repeats: int = 3) -> dict[str, str]:
    g = torch.Generator().manual_seed(0)
    Q, K, V = (0.5 * torch.randn(d, d, generator=g, dtype=dtype).to(device) for _ in range(3))
    x = torch.randn(n, d, generator=g, dtype=dtype).to(device)
    out = {}
    for name, field in (("lib", _lib), ("plain", _plain), ("sdpa", _sdpa)):
        try:
            _rk4_step(field, x, Q, K, V)  # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(repeats):
                _rk4_step(field, x, Q, K, V)
            if device == "cuda":
                torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / repeats
            out[name] = f"{n / dt:,.0f}"
        except torch.OutOfMemoryError:
            out[name] = "oom"
            torch.cuda.empty_cache()
    return out


def main() -> None:
    configs = [("cpu", n, dt) for n in (1000, 4000) for dt in (torch.float64, torch.float32)]
    if torch.cuda.is_available():
        configs += [("cuda", n, dt) for n in (10_000, 100_000) for dt in (torch.float64, torch.float32)]
    print("Chapter 3: one RK4 step (4 field evaluations) of the softmax particle system, d = 2")
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}"
          + (f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"))
    print("tokens x steps per second (higher is better)")
    print(f"{'device':6s} {'N':>7s} {'dtype':8s} | {'lib (sdpa, chunked)':>20s} {'plain softmax':>14s} {'sdpa direct':>12s}")
    for dev, n, dt in configs:
        r = bench(dev, n, dt)
        print(f"{dev:6s} {n:7d} {str(dt).replace('torch.', ''):8s} | {r['lib']:>20s} {r['plain']:>14s} {r['sdpa']:>12s}")


if __name__ == "__main__":
    main()
