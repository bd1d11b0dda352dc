"""Benchmark: kernelised attention (lib.kernels.kernel_attention) against torch's fused
scaled_dot_product_attention, for the exponential kernel and the chapter-4 kernels.

Prints one table: for each (n, d), the time of SDPA and of kernel_attention with each kernel, and
the ratio to SDPA. Run: ``python benchmarks/bench_kernels.py`` (or ``python benchmarks/run.py``).
"""

from __future__ import annotations

import time

import torch

from lib.kernel_machines import random_feature_kernel, taylor_kernel
from lib.kernels import RBF, ExpDot, Laplacian, Polynomial, kernel_attention


def _time(fn, repeat: int = 5) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    print(f"device: {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}, float32, batch 4 x 4 heads")
    print(f"{'n':>6} {'d':>4} {'kernel':>10} {'time [ms]':>10} {'/ SDPA':>8} {'max|diff| vs SDPA':>18}")
    for n, d in [(256, 8), (1024, 8), (1024, 64), (4096, 64)]:
        q, k, v = (torch.randn(4, 4, n, d, generator=g).to(dev) for _ in range(3))

        def run_sdpa(q=q, k=k, v=v):
            torch.nn.functional.scaled_dot_product_attention(q, k, v)
            sync()

        t_ref = _time(run_sdpa)
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        print(f"{n:>6} {d:>4} {'SDPA':>10} {1e3 * t_ref:>10.2f} {1.0:>8.2f} {'':>18}")
        kernels = [ExpDot(), RBF(), Laplacian(), Polynomial(2), taylor_kernel(4),
                   random_feature_kernel(d, 256, generator=torch.Generator().manual_seed(1))]
        for kern in kernels:
            def run(kern=kern, q=q, k=k, v=v):
                kernel_attention(q, k, v, kern)
                sync()

            t = _time(run)
            diff = float((kernel_attention(q, k, v, kern) - ref).abs().max()) if kern.name == "exp" else float("nan")
            diff_s = f"{diff:.1e}" if kern.name == "exp" else ""
            print(f"{n:>6} {d:>4} {kern.name:>10} {1e3 * t:>10.2f} {t / t_ref:>8.2f} {diff_s:>18}")


if __name__ == "__main__":
    main()
