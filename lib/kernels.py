r"""Kernels as first-class objects, and kernelised attention.

A kernel :math:`\kappa(q, k)` compares a query with a key. Softmax attention is the normalised
kernel smoother of the exponentiated dot product,

.. math:: y_i = \sum_j \frac{\kappa(q_i, k_j)}{\sum_l \kappa(q_i, k_l)}\, v_j ,
          \qquad \kappa(q, k) = \exp(q\cdot k/\sqrt d),

and :func:`kernel_attention` computes the same smoother for any :class:`Kernel`. Chapter 4 uses
this to swap the kernel inside a Transformer; chapter 1 uses the exponential family behind
:class:`ExpDot`.

Each kernel knows its *feature dimension* (:meth:`Kernel.feature_dim`): ``None`` (infinite) for
:class:`ExpDot`, :class:`RBF` and :class:`Laplacian`; :math:`\binom{d+p}{p}` for an inhomogeneous
polynomial of degree :math:`p` in :math:`d` dimensions; :math:`\binom{d+p-1}{p}` for a
homogeneous one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from . import _checks as C

Tensor = torch.Tensor

__all__ = [
    "Kernel", "ExpDot", "RBF", "Laplacian", "Polynomial", "Linear", "FeatureMapKernel",
    "elu_feature_map", "kernel_attention",
]


def _pair(q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    q = C.float_tensor(q, "q", min_dim=2)
    k = C.float_tensor(k, "k", min_dim=2)
    C.same_dtype([q, k], ["q", "k"])
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share the last dimension, got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.shape[:-2] != k.shape[:-2]:
        raise ValueError(f"batch shapes of q {tuple(q.shape)} and k {tuple(k.shape)} must match")
    return q, k


def _sqdist(q: Tensor, k: Tensor) -> Tensor:
    d2 = (q * q).sum(-1, keepdim=True) - 2 * q @ k.transpose(-1, -2) + (k * k).sum(-1).unsqueeze(-2)
    return d2.clamp_min(0.0)


class Kernel:
    r"""Base class: a kernel :math:`\kappa(q, k)` evaluated on all pairs of two point sets.

    Subclasses implement :meth:`gram` (``(..., n, d), (..., m, d) -> (..., n, m)``). Strictly
    positive kernels also implement :meth:`log_gram`, which lets :func:`kernel_attention`
    normalise in log space (no overflow at any temperature).
    """

    name = "kernel"
    positive = False

    def gram(self, q: Tensor, k: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def log_gram(self, q: Tensor, k: Tensor) -> Tensor:
        raise NotImplementedError(f"{self.name} is not strictly positive; it has no log_gram")

    def __call__(self, q: Tensor, k: Tensor) -> Tensor:
        return self.gram(q, k)

    def feature_dim(self, d: int) -> int | None:
        """Dimension of the kernel's feature space for inputs in :math:`\\mathbb R^d` (``None`` = infinite)."""
        return None

    def __repr__(self) -> str:
        return self.name


class ExpDot(Kernel):
    r"""Exponentiated dot product :math:`\kappa(q,k) = \exp(s\, q\cdot k)`, default :math:`s = 1/\sqrt d`.

    The Transformer's kernel: attention with it is softmax attention at inverse temperature
    ``scale``. Infinite feature dimension; not symmetric positive semi-definite once query and key
    maps differ (chapter 4).
    """

    name = "exp"
    positive = True

    def __init__(self, scale: float | None = None) -> None:
        self.scale = None if scale is None else C.positive(scale, "scale")

    def _s(self, d: int) -> float:
        return 1.0 / math.sqrt(d) if self.scale is None else self.scale

    def log_gram(self, q: Tensor, k: Tensor) -> Tensor:
        q, k = _pair(q, k)
        return self._s(q.shape[-1]) * (q @ k.transpose(-1, -2))

    def gram(self, q: Tensor, k: Tensor) -> Tensor:
        return self.log_gram(q, k).exp()


class RBF(Kernel):
    r"""Gaussian kernel :math:`\kappa(q,k) = \exp(-\gamma \|q-k\|^2)`, default :math:`\gamma = 1/(2\sqrt d)`."""

    name = "rbf"
    positive = True

    def __init__(self, gamma: float | None = None) -> None:
        self.gamma = None if gamma is None else C.positive(gamma, "gamma")

    def log_gram(self, q: Tensor, k: Tensor) -> Tensor:
        q, k = _pair(q, k)
        g = 1.0 / (2.0 * math.sqrt(q.shape[-1])) if self.gamma is None else self.gamma
        return -g * _sqdist(q, k)

    def gram(self, q: Tensor, k: Tensor) -> Tensor:
        return self.log_gram(q, k).exp()


class Laplacian(Kernel):
    r"""Laplacian kernel :math:`\kappa(q,k) = \exp(-\gamma \|q-k\|_p)` with ``p`` = 1 (default) or 2.

    Default :math:`\gamma = 1/\sqrt d`. (``p=1`` is scikit-learn's ``laplacian_kernel``.)
    """

    name = "laplacian"
    positive = True

    def __init__(self, gamma: float | None = None, p: int = 1) -> None:
        self.gamma = None if gamma is None else C.positive(gamma, "gamma")
        if p not in (1, 2):
            raise ValueError(f"p must be 1 or 2, got {p!r}")
        self.p = p

    def log_gram(self, q: Tensor, k: Tensor) -> Tensor:
        q, k = _pair(q, k)
        g = 1.0 / math.sqrt(q.shape[-1]) if self.gamma is None else self.gamma
        if self.p == 2:
            dist = _sqdist(q, k).sqrt()
        else:
            dist = torch.cdist(q, k, p=1.0)
        return -g * dist

    def gram(self, q: Tensor, k: Tensor) -> Tensor:
        return self.log_gram(q, k).exp()


class Polynomial(Kernel):
    r"""Polynomial kernel :math:`\kappa(q,k) = (c + s\, q\cdot k)^p`, default :math:`s = 1/\sqrt d`.

    Finite feature dimension: :math:`\binom{d+p}{p}` if :math:`c>0`, :math:`\binom{d+p-1}{p}` if
    :math:`c=0`. Odd degrees can be negative; :func:`kernel_attention` guards the normaliser.
    """

    positive = False

    def __init__(self, degree: int, c: float = 1.0, scale: float | None = None) -> None:
        self.degree = C.positive_int(degree, "degree")
        self.c = C.nonneg(c, "c")
        self.scale = None if scale is None else C.positive(scale, "scale")
        self.name = f"poly{degree}" + ("" if c else "-hom")

    def gram(self, q: Tensor, k: Tensor) -> Tensor:
        q, k = _pair(q, k)
        s = 1.0 / math.sqrt(q.shape[-1]) if self.scale is None else self.scale
        return (self.c + s * (q @ k.transpose(-1, -2))) ** self.degree

    def feature_dim(self, d: int) -> int:
        p = self.degree
        return math.comb(d + p, p) if self.c > 0 else math.comb(d + p - 1, p)


class Linear(Polynomial):
    r"""Linear kernel :math:`\kappa(q,k) = s\, q\cdot k` (homogeneous polynomial of degree 1)."""

    def __init__(self, scale: float | None = None) -> None:
        super().__init__(1, c=0.0, scale=scale)
        self.name = "linear"


class FeatureMapKernel(Kernel):
    r"""A kernel given by an explicit feature map, :math:`\kappa(q,k) = \varphi(q)\cdot\varphi(k)`.

    ``phi`` maps ``(..., n, d) -> (..., n, D)``; ``dim(d)`` (optional) returns ``D``. With a
    non-negative ``phi`` (e.g. :func:`elu_feature_map`, positive random features) this is linear
    attention: its Gram matrix has rank at most ``D``.
    """

    def __init__(self, phi: Callable[[Tensor], Tensor], name: str = "features",
                 dim: Callable[[int], int] | None = None, positive: bool = False) -> None:
        if not callable(phi):
            raise TypeError("phi must be callable")
        self.phi, self.name, self._dim, self.positive_features = phi, name, dim, positive

    def features(self, x: Tensor) -> Tensor:
        return self.phi(x)

    def gram(self, q: Tensor, k: Tensor) -> Tensor:
        q, k = _pair(q, k)
        return self.phi(q) @ self.phi(k).transpose(-1, -2)

    def feature_dim(self, d: int) -> int | None:
        return None if self._dim is None else self._dim(d)


def elu_feature_map(x: Tensor) -> Tensor:
    r"""The linear-attention feature map :math:`\varphi(x) = \mathrm{elu}(x) + 1 > 0` (Katharopoulos et al. 2020)."""
    return torch.nn.functional.elu(x) + 1.0


def kernel_attention(
    q: Tensor, k: Tensor, v: Tensor, kernel: Kernel, *, mask: Tensor | None = None, causal: bool = False,
    eps: float = 1e-6,
) -> Tensor:
    r"""Kernelised attention :math:`y_i = \sum_j \kappa(q_i,k_j) v_j / \sum_l \kappa(q_i,k_l)`.

    :class:`ExpDot` and :class:`RBF` run through torch's fused ``scaled_dot_product_attention``
    (as :func:`lib.attention.softmax_attention` and :func:`lib.attention.l2_attention`). Other
    strictly positive kernels are normalised in log space (a softmax of :meth:`Kernel.log_gram`),
    so exponential kernels never overflow. Other kernels use the Gram matrix directly; a
    normaliser with :math:`|\sum_l \kappa(q_i,k_l)| < \varepsilon` is replaced by
    :math:`\pm\varepsilon` (sign kept), so signed polynomial kernels cannot divide by zero.
    Masked pairs get weight 0.
    """
    from .attention import _combined_mask, l2_attention, softmax_attention

    if not isinstance(kernel, Kernel):
        raise TypeError(f"kernel must be a lib.kernels.Kernel, got {type(kernel).__name__}")
    q, k, v = C.qkv(q, k, v)
    eps = C.positive(eps, "eps")
    # The exponentiated dot product is softmax attention and the Gaussian kernel is L2 attention:
    # both run through torch's fused scaled_dot_product_attention.
    if type(kernel) is ExpDot:
        return softmax_attention(q, k, v, beta=kernel._s(q.shape[-1]), mask=mask, causal=causal)
    if type(kernel) is RBF:
        gamma = 1.0 / (2.0 * math.sqrt(q.shape[-1])) if kernel.gamma is None else kernel.gamma
        return l2_attention(q, k, v, beta=gamma, mask=mask, causal=causal)
    mask = _combined_mask(mask, causal, q.shape[-2], k.shape[-2], q.shape[:-2], q.device)
    if kernel.positive:
        lg = kernel.log_gram(q, k)
        if mask is not None:
            lg = lg.masked_fill(~mask, float("-inf"))
        return torch.softmax(lg, dim=-1) @ v
    g = kernel.gram(q, k)
    if mask is not None:
        g = g * mask
    den = g.sum(-1, keepdim=True)
    sign = torch.where(den < 0, -1.0, 1.0).to(den.dtype)
    den = torch.where(den.abs() < eps, sign * eps, den)
    return (g @ v) / den
