"""Throughput of the vectorised heat-bath sampler of chapter 2 (lib.potts.heat_bath).

Prints sweeps x chains per second for the chapter's teacher (L = 20, chain + long-range links)
at C = 10 and C = 20, for a few numbers of chains, on the CPU with one thread and with torch's
default number of threads (and on CUDA when present).
Run: ``python benchmarks/bench_potts.py`` (or ``python benchmarks/run.py``).
"""

from __future__ import annotations

import time

import torch

from lib import potts as P


def bench(C: int, n_chains: int, n_sweeps: int, device: str) -> float:
    g = torch.Generator().manual_seed(5)
    model = P.PottsModel(P.chain_couplings(20, generator=g), P.random_colour_couplings(C, generator=g), 1.0)
    gen = torch.Generator(device=device).manual_seed(0)
    P.heat_bath(model, n_chains, 2, generator=gen)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    P.heat_bath(model, n_chains, n_sweeps, generator=gen)
    if device == "cuda":
        torch.cuda.synchronize()
    return n_chains * n_sweeps / (time.perf_counter() - t)


def main() -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    default_threads = torch.get_num_threads()
    print(f"heat-bath sampler, L = 20, torch {torch.__version__}")
    print(f"{'device':>6} {'threads':>7} {'C':>3} {'chains':>8} {'sweeps':>6} {'sweeps x chains / s':>20}")
    for device in devices:
        for threads in sorted({1, default_threads}) if device == "cpu" else [default_threads]:
            torch.set_num_threads(threads)
            for C in (10, 20):
                for n_chains in ((1_000, 10_000) if device == "cpu" else (10_000, 100_000)):
                    n_sweeps = 20
                    rate = bench(C, n_chains, n_sweeps, device)
                    print(f"{device:>6} {threads:>7} {C:>3} {n_chains:>8} {n_sweeps:>6} {rate:>20.3g}")
    torch.set_num_threads(default_threads)


if __name__ == "__main__":
    main()
