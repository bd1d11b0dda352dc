"""Shared, tested implementations for *Attention, Reproduced*.

The book's chapters import everything numerical from here: attention and its variants
(:mod:`lib.attention`), kernels (:mod:`lib.kernels`), normalisations (:mod:`lib.norms`), the
log-normalizer of the softmax family (:mod:`lib.lognormalizer`), the scale switch
(:mod:`lib.scale`) and the claims mechanism (:mod:`lib.claims`). Chapter-specific models live in
their own modules. Nothing runs at import time.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
