"""Speed of chapter 5's pure-attention layer and classifier (lib.hardmax, lib.sentiment).

Prints milliseconds per call of the hardmax and low-temperature softmax layers on review-sized
batches, the cost of running the clustering dynamics on one configuration of 1,000 tokens, and the time
of one training epoch of the classifier at the chapter's CI size (Rotten Tomatoes, n = 20) and
at the paper's IMDb size (35,000 reviews of n = 128 tokens, extrapolated from 20 batches), on the
CPU and, when available, the GPU. Timings only: nothing is asserted.
"""

from __future__ import annotations

import torch

from lib.hardmax import hardmax_layer, padding_mask, run_dynamics, softmax_layer
from lib.sentiment import HardmaxClassifier
from repro.timing import time_ms as timeit


def epoch_time(dev: str, n_docs: int, n: int, d: int, vocab: int = 8000, batches: int = 20) -> float:
    """Seconds per training epoch (softmax T = 1e-3, batch 64), extrapolated from ``batches`` steps."""
    g = torch.Generator().manual_seed(0)
    model = HardmaxClassifier(vocab, d, generator=g, init_std=0.1).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ids = torch.randint(1, vocab, (64, n), generator=g).to(dev)
    lens = torch.randint(n // 2, n + 1, (64,), generator=g).to(dev)
    y = torch.randint(0, 2, (64,), generator=g).float().to(dev)

    def step():
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(ids, lens, temperature=1e-3), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    ms = timeit(step, reps=batches)
    return ms * 1e-3 * (n_docs / 64)


def main() -> None:
    torch.set_num_threads(1)  # as the chapter at CI scale: tiny tensors, threads only add overhead
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"{'device':>6} {'B':>4} {'n':>4} {'d':>3} | {'hardmax':>8} {'softmax':>8}  (ms per layer, float32, masked)")
    for dev in devices:
        for n, d in ((20, 2), (20, 16), (128, 2), (128, 16)):
            g = torch.Generator().manual_seed(0)
            z = torch.randn(64, n, d, generator=g).to(dev)
            mask = padding_mask(torch.randint(1, n + 1, (64,), generator=g).to(dev), n)
            th = timeit(lambda z=z, mask=mask: hardmax_layer(z, alpha=1.0, mask=mask))
            ts = timeit(lambda z=z, mask=mask: softmax_layer(z, alpha=1.0, temperature=1e-3, mask=mask))
            print(f"{dev:>6} {64:>4} {n:>4} {d:>3} | {th:8.3f} {ts:8.3f}")
    for dev in devices:
        z0 = torch.randn(1000, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dev)
        t = timeit(lambda z0=z0: run_dynamics(z0, alpha=0.5, layers=100), reps=1)
        print(f"{dev:>6}: clustering dynamics, n = 1000, d = 8, 100 layers, float64: {t / 1e3:.2f} s")
    for dev in devices:
        for label, n_docs, n in (("CI (Rotten Tomatoes, 8,950 x 20)", 8950, 20), ("paper (IMDb, 35,000 x 128)", 35000, 128)):
            for d in (2, 16):
                print(f"{dev:>6}: epoch time at {label}, d = {d}: {epoch_time(dev, n_docs, n, d):.1f} s")


if __name__ == "__main__":
    main()
