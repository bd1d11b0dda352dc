"""Speed of lib's attention against a plain softmax(QK^T)V and torch's fused kernel.

Prints milliseconds per call for self-attention on N tokens of head dimension d, on the CPU and
(when available) on the GPU, and the cost of lib's input validation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lib.attention import softmax_attention
from lib.kernels import ExpDot, kernel_attention
from repro.timing import time_ms as timeit


def plain(q, k, v, beta):
    return torch.softmax(beta * q @ k.transpose(-1, -2), -1) @ v


def main() -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"{'device':>6} {'dtype':>8} {'d':>3} {'N':>6} | {'lib':>8} {'sdpa':>8} {'plain':>8} {'kernel(exp)':>11}  (ms)")
    for dev in devices:
        for dtype in (torch.float32, torch.float64):
            for d, n in ((8, 1000), (8, 4000), (64, 4000)):
                g = torch.Generator(device=dev).manual_seed(0)
                q, k, v = (torch.randn(n, d, dtype=dtype, device=dev, generator=g) for _ in range(3))
                beta = 1 / math.sqrt(d)
                t_lib = timeit(lambda q=q, k=k, v=v: softmax_attention(q, k, v))
                t_sdpa = timeit(lambda q=q, k=k, v=v, b=beta: F.scaled_dot_product_attention(q, k, v, scale=b))
                t_plain = timeit(lambda q=q, k=k, v=v, b=beta: plain(q, k, v, b))
                t_kern = timeit(lambda q=q, k=k, v=v: kernel_attention(q, k, v, ExpDot()))
                print(f"{dev:>6} {str(dtype)[6:]:>8} {d:>3} {n:>6} | {t_lib:8.2f} {t_sdpa:8.2f} {t_plain:8.2f} {t_kern:11.2f}")


if __name__ == "__main__":
    main()
