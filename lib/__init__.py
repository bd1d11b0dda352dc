"""Shared, tested implementations for *Attention, Reproduced*.

The book's chapters import everything numerical from here: attention and its variants
(:mod:`lib.attention`), kernels (:mod:`lib.kernels`), normalisations (:mod:`lib.norms`), the
log-normalizer of the softmax family (:mod:`lib.lognormalizer`). Chapter-specific models live in
their own modules. The machinery that turns numbers into verdicts (claims, rules, ledger, scale
switch, provenance) is the separate package :mod:`repro`. Nothing runs at import time.
"""

__all__ = ["__version__"]
__version__ = "0.1.0"
