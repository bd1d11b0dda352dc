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
    "RBF",
    "ExpDot",
    "FeatureMapKernel",
    "Kernel",
    "Laplacian",
    "Linear",
    "Polynomial",
    "default_scale",
    "elu_feature_map",
    "kernel_attention",
]


def default_scale(d: int, value: float | None = None, *, factor: float = 1.0) -> float:
    r"""The book's default-scale rule: ``value`` if given, else :math:`\text{factor}/\sqrt d`.

    Every kernel with a dot-product scale or a bandwidth uses it (``ExpDot.scale``,
    ``Polynomial.scale``, ``Laplacian.gamma``: ``factor = 1``; ``RBF.gamma``: ``factor = 1/2``).
    ``d = 0`` with no ``value`` raises ``ValueError``.
    """
    if value is not None:
        return value
    if d < 1:
        raise ValueError("the default scale factor/sqrt(d) needs dimension d >= 1 (got d = 0); pass it explicitly")
    return factor / math.sqrt(d)


def _pair(q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    return C.qk(q, k)


def _sqdist(q: Tensor, k: Tensor) -> Tensor:
    r"""Squared distances :math:`\|q_i-k_j\|^2` without cancellation (differences formed first)."""
    return _dist(q, k) ** 2


def _dist(q: Tensor, k: Tensor) -> Tensor:
    r"""Euclidean distances, computed from the differences (accurate far from the origin; the
    gradient at :math:`q_i = k_j` is the subgradient 0, not NaN)."""
    return torch.cdist(q, k, p=2.0, compute_mode="donot_use_mm_for_euclid_dist")


class Kernel:
    r"""Base class: a kernel :math:`\kappa(q, k)` evaluated on all pairs of two point sets.

    Subclasses implement :meth:`gram` (``(..., n, d), (..., m, d) -> (..., n, m)``). ``positive``
    says that the kernel takes only positive values (so the normaliser of
    :func:`kernel_attention` is positive and needs no guard). Kernels of the form
    :math:`\exp(\ell(q,k))` also implement :meth:`log_gram`, which lets :func:`kernel_attention`
    normalise in log space (no overflow at any temperature).
    """

    name = "kernel"
    positive = False

    def gram(self, q: Tensor, k: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def log_gram(self, q: Tensor, k: Tensor) -> Tensor:
        raise NotImplementedError(f"{self.name} is not of the form exp(l(q, k)); it has no log_gram")

    @property
    def has_log_gram(self) -> bool:
        """Whether the class implements :meth:`log_gram`."""
        return type(self).log_gram is not Kernel.log_gram

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
        return default_scale(d, self.scale)

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
        return -self._g(q.shape[-1]) * _sqdist(q, k)

    def _g(self, d: int) -> float:
        return default_scale(d, self.gamma, factor=0.5)

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
        dist = _dist(q, k) if self.p == 2 else torch.cdist(q, k, p=1.0)
        return -default_scale(q.shape[-1], self.gamma) * dist

    def gram(self, q: Tensor, k: Tensor) -> Tensor:
        return self.log_gram(q, k).exp()


class Polynomial(Kernel):
    r"""Polynomial kernel :math:`\kappa(q,k) = (c + s\, q\cdot k)^p`, default :math:`s = 1/\sqrt d`.

    Finite feature dimension: :math:`\binom{d+p}{p}` if :math:`c>0`, :math:`\binom{d+p-1}{p}` if
    :math:`c=0`. Odd degrees can be negative, even degrees vanish where :math:`s\,q\cdot k=-c`:
    ``positive`` is ``False`` and :func:`kernel_attention` guards the normaliser.
    """

    positive = False

    def __init__(self, degree: int, c: float = 1.0, scale: float | None = None) -> None:
        self.degree = C.positive_int(degree, "degree")
        self.c = C.nonneg(c, "c")
        self.scale = None if scale is None else C.positive(scale, "scale")
        self.name = f"poly{degree}" + ("" if c else "-hom")

    def gram(self, q: Tensor, k: Tensor) -> Tensor:
        q, k = _pair(q, k)
        s = default_scale(q.shape[-1], self.scale)
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

    ``phi`` maps ``(..., n, d) -> (..., n, D)``; ``dim(d)`` (optional) returns ``D``. ``positive``
    declares that ``phi`` is positive (e.g. :func:`elu_feature_map`, positive random features), so
    that :math:`\kappa>0` and :func:`kernel_attention` normalises without the signed-kernel guard;
    it is stored as :attr:`positive` (and, for compatibility, ``positive_features``). This is linear
    attention: :func:`kernel_attention` computes :math:`\varphi(Q)(\varphi(K)^\top V)` without the
    ``n x m`` Gram matrix (unless a subclass overrides :meth:`gram` with a closed form).
    """

    def __init__(self, phi: Callable[[Tensor], Tensor], name: str = "features",
                 dim: Callable[[int], int] | None = None, positive: bool = False) -> None:
        if not callable(phi):
            raise TypeError("phi must be callable")
        if not isinstance(positive, bool):
            raise TypeError(f"positive must be a bool, got {type(positive).__name__}")
        self.phi, self.name, self._dim = phi, name, dim
        self.positive = positive

    @property
    def positive_features(self) -> bool:
        """Alias of :attr:`positive` (the name under which the flag used to be stored)."""
        return self.positive

    def features(self, x: Tensor) -> Tensor:
        return self.phi(x)

    def gram(self, q: Tensor, k: Tensor) -> Tensor:
        q, k = _pair(q, k)
        return self.phi(q) @ self.phi(k).transpose(-1, -2)

    def feature_dim(self, d: int) -> int | None:
        return None if self._dim is None else self._dim(d)

    @property
    def uses_features(self) -> bool:
        """Whether :meth:`gram` is the plain feature product (then attention uses the linear form)."""
        return type(self).gram is FeatureMapKernel.gram


def elu_feature_map(x: Tensor) -> Tensor:
    r"""The linear-attention feature map :math:`\varphi(x) = \mathrm{elu}(x) + 1 > 0` (Katharopoulos et al. 2020)."""
    return torch.nn.functional.elu(x) + 1.0


def _normalise(num: Tensor, den: Tensor, positive: bool, eps: float) -> Tensor:
    """``num / den`` with the signed-kernel guard (``|den| < eps`` -> ``±eps``) unless ``positive``."""
    if positive:
        return num / den.clamp_min(torch.finfo(den.dtype).tiny)
    sign = torch.where(den < 0, -1.0, 1.0).to(den.dtype)
    den = torch.where(den.abs() < eps, sign * eps, den)
    return num / den


def _key_only(mask: Tensor) -> Tensor | None:
    """If the validated mask does not depend on the query (a key padding mask), its ``(..., 1, m)`` row."""
    row = mask[..., :1, :]
    return row if bool((mask == row).all()) else None


def _linear_attention(fq: Tensor, fk: Tensor, v: Tensor, *, causal: bool, positive: bool, eps: float,
                      block: int = 256) -> Tensor:
    r""":math:`\varphi(Q)(\varphi(K)^\top V) / \varphi(Q)(\varphi(K)^\top\mathbf 1)`, causal by blocks of queries:
    each block sees the running sums over the keys before it plus a masked ``block x block`` part."""
    ones = torch.ones(*v.shape[:-1], 1, dtype=v.dtype, device=v.device)
    va = torch.cat([v, ones], dim=-1)  # numerator and normaliser in one product
    if not causal:
        out = fq @ (fk.transpose(-1, -2) @ va)
        return _normalise(out[..., :-1], out[..., -1:], positive, eps)
    n, m = fq.shape[-2], fk.shape[-2]
    off = m - n  # query i sees keys j <= i + off
    state = torch.zeros(*fq.shape[:-2], fk.shape[-1], va.shape[-1], dtype=v.dtype, device=v.device)
    outs, done = [], 0  # keys [0, done) are in `state`
    for s0 in range(0, n, block):
        s1 = min(n, s0 + block)
        lo, hi = s0 + off, s1 + off  # keys [done, lo] fully visible to the block; (lo, hi) partly
        if lo + 1 > done:
            state = state + fk[..., done : lo + 1, :].transpose(-1, -2) @ va[..., done : lo + 1, :]
            done = lo + 1
        fb = fq[..., s0:s1, :]
        o = fb @ state
        if hi > done:
            g = fb @ fk[..., done:hi, :].transpose(-1, -2)  # (b, hi - done)
            tri = torch.ones(s1 - s0, hi - done, dtype=torch.bool, device=v.device).tril(diagonal=s0 + off - done)
            o = o + (g * tri) @ va[..., done:hi, :]
        outs.append(o)
    out = torch.cat(outs, dim=-2)
    return _normalise(out[..., :-1], out[..., -1:], positive, eps)


def kernel_attention(
    q: Tensor, k: Tensor, v: Tensor, kernel: Kernel, *, mask: Tensor | None = None, causal: bool = False,
    eps: float = 1e-6,
) -> Tensor:
    r"""Kernelised attention :math:`y_i = \sum_j \kappa(q_i,k_j) v_j / \sum_l \kappa(q_i,k_l)`.

    Routes, fastest first:

    * :class:`ExpDot` and :class:`RBF` run through torch's fused ``scaled_dot_product_attention``
      (as :func:`lib.attention.softmax_attention` and :func:`lib.attention.l2_attention`).
    * A :class:`FeatureMapKernel` whose Gram matrix is the feature product is linear attention,
      :math:`\varphi(Q)(\varphi(K)^\top V)` normalised by :math:`\varphi(Q)(\varphi(K)^\top\mathbf 1)`:
      cost :math:`O((n+m)De)`, no ``n x m`` matrix. ``causal`` runs by blocks with running sums; a key
      padding mask (the same for every query) zeroes the masked keys' features; any other mask
      falls back to the Gram matrix.
    * Other kernels with :meth:`Kernel.log_gram` are normalised in log space (a softmax), so
      exponential kernels never overflow.
    * Otherwise the Gram matrix is used directly.

    The normaliser of a ``positive`` kernel is used as it is (rows sum to one); for a signed kernel
    a normaliser with :math:`|\sum_l \kappa(q_i,k_l)| < \varepsilon` is replaced by
    :math:`\pm\varepsilon` (sign kept), so signed polynomial kernels cannot divide by zero.
    Masked pairs get weight 0.
    """
    from .attention import _combined_mask, l2_attention, softmax_attention

    if not isinstance(kernel, Kernel):
        raise TypeError(f"kernel must be a lib.kernels.Kernel, got {type(kernel).__name__}")
    q, k, v = C.qkv(q, k, v)
    eps = C.positive(eps, "eps")
    if type(kernel) is ExpDot:
        return softmax_attention(q, k, v, beta=kernel._s(q.shape[-1]), mask=mask, causal=causal)
    if type(kernel) is RBF:
        return l2_attention(q, k, v, beta=kernel._g(q.shape[-1]), mask=mask, causal=causal)
    n, m = q.shape[-2], k.shape[-2]
    if isinstance(kernel, FeatureMapKernel) and kernel.uses_features:
        fk = kernel.phi(k)
        key_row = None
        if mask is not None:
            C.bool_mask(mask, n, m, q.shape[:-2])
            key_row = _key_only(mask)
        if mask is None or key_row is not None:
            if causal:
                from .attention import _check_causal

                _check_causal(n, m)
            if key_row is not None:
                fk = fk * key_row.expand(*q.shape[:-2], 1, m).transpose(-1, -2).to(fk.dtype)
            return _linear_attention(kernel.phi(q), fk, v, causal=causal, positive=kernel.positive, eps=eps)
    mask = _combined_mask(mask, causal, n, m, q.shape[:-2], q.device)
    if kernel.has_log_gram:
        lg = kernel.log_gram(q, k)
        if mask is not None:
            lg = lg.masked_fill(~mask, float("-inf"))
        return torch.softmax(lg, dim=-1) @ v
    g = kernel.gram(q, k)
    if mask is not None:
        g = g * mask
    return _normalise(g @ v, g.sum(-1, keepdim=True), kernel.positive, eps)
