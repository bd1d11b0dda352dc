r"""Glue between the book's five views of one softmax attention (chapter 6, :ref:`ch-lenses`).

Chapter 6 puts the objects of chapters 1 to 5 side by side. It computes everything with the lib
objects those chapters use; this module only holds the few lines that join them:

*Temperature (chapters 1, 3, 5).* :func:`consensus_field` is chapter 3's particle field
(:func:`lib.pde.particle_velocity` with :math:`Q=\beta A`, :math:`K=V=I`) minus the identity,

.. math:: \dot x_i = \mathbb E_\beta[y\mid x_i] - x_i, \qquad
          \mathbb E_\beta[y\mid x_i] = \sum_j \frac{e^{\beta\langle A x_i, x_j\rangle}}{\sum_l e^{\beta\langle A x_i, x_l\rangle}}\,x_j
          = \beta^{-1}\nabla_q \log\sum_j e^{\beta\, q\cdot x_j}\Big|_{q = A x_i},

(chapter 1's gradient of the log-normalizer); :func:`consensus_euler_step` is its explicit Euler
step with step :math:`h = \alpha/(1+\alpha)`, which is chapter 5's softmax layer. As
:math:`\beta\to\infty` it tends to chapter 5's hardmax layer; :func:`score_gaps` and
:func:`temperature_sweep` measure how fast.

*Energies (chapters 1, 3).* :func:`interaction_energy` :math:`E_\beta`, :func:`summed_log_normalizer`
:math:`F` and :func:`sphere_field` (chapter 3's field with a value map ``V``, projected on the
tangent space of the sphere), with :func:`energy_rate`, the rate of change of an energy along a
field (by autograd), :func:`projected_gradient` (the tangential gradient, for the identity
:math:`\dot x_i = P^\perp_{x_i}\nabla_{x_i}E_\beta / Z_i`), and :func:`adversarial_energy_rate`, an
optimiser over configurations that looks for the smallest rate (a sign claim needs more than
random samples). :func:`frozen_pattern_field` and :func:`pattern_log_normalizer` are the same flow
and log-normalizer with the keys (Hopfield's stored patterns) held fixed.

*Kernels on a Potts teacher (chapters 2, 4).* :class:`KernelFactoredAttention` is chapter 2's
factored layer whose positional softmax is replaced by a normalised kernel of learned query and
key position embeddings, computed by chapter 4's :func:`lib.kernels.kernel_attention`.

*One cloud, five views.* :func:`potts_view` writes the attention weights of a cloud as the
conditionals of a Potts model (:class:`lib.potts.PottsModel`).

Nothing here plots; randomness only through explicit generators.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from . import _checks as C
from .hardmax import attention_sets, run_dynamics, scores
from .kernels import Kernel, kernel_attention
from .lognormalizer import log_normalizer
from .pde import particle_velocity
from .potts import FactoredAttention, PottsModel

Tensor = torch.Tensor

__all__ = [
    "AdversarialSearch",
    "KernelFactoredAttention",
    "TemperatureSweep",
    "adversarial_energy_rate",
    "consensus_euler_step",
    "consensus_field",
    "decay_rate",
    "energy_rate",
    "frozen_pattern_field",
    "interaction_energy",
    "pattern_log_normalizer",
    "potts_view",
    "projected_gradient",
    "random_sphere_clouds",
    "score_gaps",
    "sphere_field",
    "summed_log_normalizer",
    "temperature_sweep",
]


# --------------------------------------------------------------------------------------------
# Temperature: chapter 3's field, chapter 5's layer, chapter 1's gradient
# --------------------------------------------------------------------------------------------


def _tokens(x: object, name: str = "x") -> Tensor:
    return C.float_tensor(x, name, min_dim=2)


def _matrix_A(A: object | None, x: Tensor) -> Tensor:
    d = x.shape[-1]
    if A is None:
        return torch.eye(d, dtype=x.dtype, device=x.device)
    A = C.float_tensor(A, "A", min_dim=2)
    if tuple(A.shape) != (d, d):
        raise ValueError(
            f"A must be ({d}, {d}) for tokens of dimension {d}, got {tuple(A.shape)}"
        )
    return A.to(dtype=x.dtype, device=x.device)


def consensus_field(x: Tensor, *, beta: float, A: Tensor | None = None) -> Tensor:
    r"""The consensus field :math:`\mathbb E_\beta[y\mid x_i] - x_i` of a token cloud.

    Chapter 3's particle field :func:`lib.pde.particle_velocity` with :math:`Q = \beta A`,
    :math:`K = V = I` (scores :math:`\beta\langle Ax_i, x_j\rangle`), minus :math:`x_i`.

    Parameters
    ----------
    x
        Tokens ``(..., n, d)``.
    beta
        Inverse temperature :math:`\beta > 0`.
    A
        Key-query matrix ``(d, d)`` (default identity), as in chapter 5.
    """
    x = _tokens(x)
    beta = C.positive(beta, "beta")
    A = _matrix_A(A, x)
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    return particle_velocity(x, Q=beta * A, K=eye, V=eye) - x


def consensus_euler_step(
    x: Tensor,
    *,
    beta: float,
    alpha: float,
    A: Tensor | None = None,
    h: float | None = None,
) -> Tensor:
    r"""One explicit Euler step :math:`x + h\,(\mathbb E_\beta[y\mid x] - x)` of :func:`consensus_field`.

    The default step :math:`h = \alpha/(1+\alpha)` makes it chapter 5's softmax layer
    (:func:`lib.hardmax.softmax_layer` at temperature :math:`1/\beta`). ``h`` overrides the step
    (e.g. the wrong step :math:`h=\alpha` of a residual layer without the :math:`1/(1+\alpha)`
    normalisation).
    """
    alpha = C.positive(alpha, "alpha")
    step = alpha / (1.0 + alpha) if h is None else C.positive(h, "h")
    return x + step * consensus_field(x, beta=beta, A=A)


def score_gaps(
    trajectory: Tensor, *, A: Tensor | None = None, tie_rtol: float | None = None
) -> Tensor:
    r"""Score gaps :math:`g^k_{ij} = \max_l s^k_{il} - s^k_{ij}` of the keys outside the argmax sets.

    ``trajectory`` ``(K+1, ..., n, d)`` is a hardmax trajectory (:func:`lib.hardmax.run_dynamics`);
    the gaps are taken at layers :math:`0..K-1` (those that drive a step), with
    :math:`s_{ij} = \langle Az_i, z_j\rangle`. Keys in the argmax set :math:`C_i` (ties included,
    :func:`lib.hardmax.attention_sets`) get ``inf``. Returns ``(K, ..., n, n)``. The softmax weight
    of key :math:`j` is at most :math:`e^{-\beta g_{ij}}`, so the smallest gap sets the rate at
    which the softmax dynamics approach the hardmax ones.
    """
    tr = _tokens(trajectory, "trajectory")
    if tr.dim() < 3 or tr.shape[0] < 2:
        raise ValueError(
            f"trajectory must be (K+1, ..., n, d) with K >= 1 layers, got {tuple(tr.shape)}"
        )
    s = scores(tr[:-1], A=A)
    sets = attention_sets(tr[:-1], A=A, tie_rtol=tie_rtol)
    top = s.max(dim=-1, keepdim=True).values
    return (top - s).masked_fill(sets, float("inf"))


def decay_rate(
    betas: Sequence[float] | np.ndarray,
    errors: Sequence[float] | np.ndarray,
    *,
    window: tuple[float, float] = (1e-12, 1e-3),
    min_points: int = 3,
) -> float:
    r"""Exponential decay rate :math:`\lambda` of ``errors`` against ``betas``, :math:`\text{err}\approx c\,e^{-\lambda\beta}`.

    Least-squares slope of :math:`\log\text{err}` against :math:`\beta` over the points whose error
    lies in ``window`` (above round-off, in the asymptotic regime), negated. When fewer than
    ``min_points`` points fall in the window (the error never enters it), the slope is fitted on
    the ``min_points`` largest :math:`\beta` instead, so a configuration whose error does not decay
    gets a rate near zero rather than no answer.
    """
    b = np.asarray(betas, dtype=float)
    e = np.asarray(errors, dtype=float)
    if b.ndim != 1 or b.shape != e.shape or len(b) < min_points:
        raise ValueError(
            f"betas and errors must be 1-D of equal length >= {min_points}"
        )
    if not (np.all(np.isfinite(b)) and np.all(np.isfinite(e))):
        raise ValueError("betas and errors must be finite")
    lo, hi = window
    if not 0 < lo < hi:
        raise ValueError(f"window must satisfy 0 < lo < hi, got {window}")
    keep = (e >= lo) & (e <= hi)
    if keep.sum() < min_points:
        keep = np.zeros_like(keep)
        keep[np.argsort(b)[-min_points:]] = True
    e_k = np.maximum(e[keep], np.finfo(float).tiny)
    return float(-np.polyfit(b[keep], np.log(e_k), 1)[0])


@dataclass
class TemperatureSweep:
    r"""Output of :func:`temperature_sweep`.

    betas
        The inverse temperatures ``(m,)``.
    errors
        ``(m,)``: :math:`\max_i\|z_i^K(\beta) - z_i^K(\infty)\|` after ``layers`` layers, softmax
        against hardmax.
    gap
        The smallest score gap :math:`g_{\min}` along the hardmax trajectory (:func:`score_gaps`).
    rate
        The fitted decay rate (:func:`decay_rate`).
    hard, soft
        The hardmax trajectory ``(K+1, n, d)`` and the softmax one at the largest ``beta``.
    """

    betas: np.ndarray
    errors: np.ndarray
    gap: float
    rate: float
    hard: Tensor
    soft: Tensor

    @property
    def ratio(self) -> float:
        r"""Fitted rate over the predicted one, :math:`\lambda / g_{\min}` (1 when the gap sets the rate)."""
        return self.rate / self.gap if self.gap > 0 else math.inf


def temperature_sweep(
    z0: Tensor,
    *,
    alpha: float,
    layers: int,
    betas: Sequence[float],
    A: Tensor | None = None,
    window: tuple[float, float] = (1e-12, 1e-3),
) -> TemperatureSweep:
    r"""Run chapter 5's hardmax dynamics and the softmax ones at each :math:`\beta` from ``z0`` ``(n, d)``.

    Both through :func:`lib.hardmax.run_dynamics` (``temperature = 1/beta`` for the softmax
    runs), ``layers`` layers with step ``alpha``. Returns the final-layer deviations, the smallest
    score gap and the fitted rate (:class:`TemperatureSweep`).
    """
    z0 = _tokens(z0, "z0")
    if z0.dim() != 2:
        raise ValueError(f"z0 must be one configuration (n, d), got {tuple(z0.shape)}")
    bs = np.asarray([C.positive(float(b), "beta") for b in betas])
    if len(bs) < 3:
        raise ValueError("need at least 3 values of beta")
    hard = run_dynamics(z0, alpha=alpha, layers=layers, A=A).trajectory
    errs, soft = [], None
    for b in bs:
        soft = run_dynamics(
            z0, alpha=alpha, layers=layers, A=A, temperature=1.0 / b
        ).trajectory
        errs.append(float((soft[-1] - hard[-1]).norm(dim=-1).max()))
    gaps = score_gaps(hard, A=A)
    errs_a = np.asarray(errs)
    return TemperatureSweep(
        betas=bs,
        errors=errs_a,
        gap=float(gaps.min()),
        rate=decay_rate(bs, errs_a, window=window),
        hard=hard,
        soft=soft,
    )


# --------------------------------------------------------------------------------------------
# Energies along the particle flow
# --------------------------------------------------------------------------------------------


def interaction_energy(x: Tensor, *, beta: float) -> Tensor:
    r"""Interaction energy :math:`E_\beta(x) = \frac{1}{2\beta}\sum_{i,j} e^{\beta\langle x_i, x_j\rangle}`.

    ``x``: tokens ``(..., n, d)``; returns ``(...)``. The energy of Geshkovski et al. (2023), which
    the attention dynamics on the sphere increase (chapter 6).
    """
    x = _tokens(x)
    beta = C.positive(beta, "beta")
    return torch.exp(beta * (x @ x.transpose(-1, -2))).sum(dim=(-1, -2)) / (2.0 * beta)


def summed_log_normalizer(x: Tensor, *, beta: float) -> Tensor:
    r"""Chapter 1's log-normalizer summed over the tokens, keys = the tokens themselves:

    .. math:: F(x) = \sum_i A_x(x_i), \qquad A_x(q) = \log\sum_j e^{\beta\, q\cdot x_j},

    computed by :func:`lib.lognormalizer.log_normalizer`. ``x``: ``(..., n, d)``; returns ``(...)``.
    """
    x = _tokens(x)
    keys = x.unsqueeze(-3).expand(
        *x.shape[:-1], *x.shape[-2:]
    )  # (..., n, n, d): token i's keys
    return log_normalizer(x, keys, beta=beta).sum(dim=-1)


def sphere_field(x: Tensor, *, beta: float, V: Tensor | None = None) -> Tensor:
    r"""Chapter 3's particle field with value map ``V``, projected on the sphere's tangent space:

    .. math:: \dot x_i = P^\perp_{x_i}\Big(\sum_j \mathrm{softmax}_j(\beta\langle x_i, x_j\rangle)\, V x_j\Big),
              \qquad P^\perp_x y = y - \langle x, y\rangle x.

    :func:`lib.pde.particle_velocity` with :math:`Q = \beta I`, :math:`K = I`; with ``V = None``
    (identity) it is :func:`lib.pde.sphere_velocity`. ``x``: unit tokens ``(..., n, d)``.
    """
    x = _tokens(x)
    beta = C.positive(beta, "beta")
    d = x.shape[-1]
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    V = (
        eye
        if V is None
        else C.float_tensor(V, "V", min_dim=2).to(dtype=x.dtype, device=x.device)
    )
    v = particle_velocity(x, Q=beta * eye, K=eye, V=V)
    return v - (v * x).sum(-1, keepdim=True) * x


def energy_rate(
    energy: Callable[[Tensor], Tensor], x: Tensor, velocity: Tensor
) -> tuple[Tensor, Tensor]:
    r"""Rate of change :math:`\frac{d}{dt}E = \sum_i \nabla_{x_i}E\cdot \dot x_i` of an energy along a field.

    ``energy`` maps tokens ``(..., n, d)`` to ``(...)``; ``velocity`` is :math:`\dot x` at ``x``
    (same shape). The gradient is taken by autograd. Returns ``(rate, cosine)``, both ``(...)``:
    the rate and the rate divided by :math:`\|\nabla E\|\,\|\dot x\|` (a scale-free sign test).
    """
    x = _tokens(x)
    velocity = _tokens(velocity, "velocity")
    if velocity.shape != x.shape:
        raise ValueError(
            f"velocity {tuple(velocity.shape)} must have the shape of x {tuple(x.shape)}"
        )
    xg = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(energy(xg).sum(), xg)
    rate = (grad * velocity).sum(dim=(-1, -2))
    norm = grad.flatten(-2).norm(dim=-1) * velocity.flatten(-2).norm(dim=-1)
    return rate.detach(), (rate / norm.clamp_min(torch.finfo(x.dtype).tiny)).detach()


def projected_gradient(energy: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    r"""Tangential gradient :math:`P^\perp_{x_i}\nabla_{x_i}\mathcal E` of an energy on the unit sphere.

    ``energy`` maps unit tokens ``(..., n, d)`` to ``(...)``; the Euclidean gradient is taken by
    autograd and projected, :math:`P^\perp_x g = g - \langle x, g\rangle x`. Returns ``(..., n, d)``.
    Geshkovski et al. (2023) write the attention flow for :math:`V=I` as
    :math:`\dot x_i = Z_i^{-1} P^\perp_{x_i}\nabla_{x_i}E_\beta` (chapter 6, claim 6.6).
    """
    x = _tokens(x)
    xg = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(energy(xg).sum(), xg)
    return grad - (grad * x).sum(-1, keepdim=True) * x


def pattern_log_normalizer(x: Tensor, y: Tensor, *, beta: float) -> Tensor:
    r"""Chapter 1's log-normalizer of the states ``x`` against fixed patterns ``y``, summed:

    .. math:: F(x; Y) = \sum_i \log\sum_j e^{\beta\langle x_i, y_j\rangle},

    ``x`` ``(..., n, d)``, ``y`` ``(..., m, d)``; returns ``(...)``. Minus :math:`\beta^{-1}` times
    it is, up to a constant on the sphere, the summed Hopfield energy of the states with the
    patterns stored (:func:`lib.hopfield.hopfield_energy`). With ``y = x`` it is
    :func:`summed_log_normalizer`.
    """
    x, y = _tokens(x), _tokens(y, "y")
    keys = y.unsqueeze(-3).expand(*y.shape[:-2], x.shape[-2], *y.shape[-2:])
    return log_normalizer(x, keys, beta=beta).sum(dim=-1)


def frozen_pattern_field(x: Tensor, y: Tensor, *, beta: float) -> Tensor:
    r"""The sphere flow of the states ``x`` with the keys and values held at the patterns ``y``:

    .. math:: \dot x_i = P^\perp_{x_i}\Big(\sum_j \mathrm{softmax}_j(\beta\langle x_i, y_j\rangle)\, y_j\Big)
              = \beta^{-1} P^\perp_{x_i}\nabla_{x_i} F(x; Y),

    the continuous-time Hopfield retrieval on the sphere (chapter 1's update, the patterns fixed).
    ``x`` ``(..., n, d)`` unit states, ``y`` ``(..., m, d)`` patterns; returns ``(..., n, d)``.
    """
    x, y = _tokens(x), _tokens(y, "y")
    beta = C.positive(beta, "beta")
    w = torch.softmax(beta * (x @ y.transpose(-1, -2)), dim=-1)
    g = w @ y
    return g - (g * x).sum(-1, keepdim=True) * x


def random_sphere_clouds(
    starts: int, n: int, d: int, *, generator: torch.Generator, clustered: float = 0.5
) -> Tensor:
    r"""``starts`` random clouds of ``n`` unit tokens in :math:`\mathbb R^d`, ``(starts, n, d)``.

    A fraction ``clustered`` of them is drawn around one random direction (each token the first
    token plus :math:`0.3` times a Gaussian, normalised), the others uniformly on the sphere.
    """
    starts, n, d = (C.positive_int(v, k) for v, k in ((starts, "starts"), (n, "n"), (d, "d")))
    x = torch.randn(starts, n, d, generator=generator, dtype=torch.float64)
    if not 0.0 <= float(clustered) <= 1.0:
        raise ValueError(f"clustered must be a fraction in [0, 1], got {clustered}")
    k = round(starts * float(clustered))
    if k:
        x[starts - k :] = x[starts - k :, :1] + 0.3 * x[starts - k :]
    return x / x.norm(dim=-1, keepdim=True)


@dataclass
class AdversarialSearch:
    r"""Output of :func:`adversarial_energy_rate`.

    start_cos
        ``(starts,)``: the cosine of the rate at the random starting clouds.
    final_cos
        ``(starts,)``: the smallest cosine met along each start's optimisation.
    best_x
        ``(n, d)``: the configuration with the smallest cosine met.
    best_rate
        Its rate :math:`\frac{d}{dt}\mathcal E` (not normalised).
    """

    start_cos: Tensor
    final_cos: Tensor
    best_x: Tensor
    best_rate: float

    @property
    def min_cos(self) -> float:
        """The smallest cosine found, over the starts and the optimisation."""
        return float(torch.minimum(self.start_cos.min(), self.final_cos.min()))


def _cosine(
    energy: Callable[[Tensor], Tensor], field: Callable[[Tensor], Tensor], x: Tensor
) -> tuple[Tensor, Tensor]:
    """Differentiable rate and cosine of ``energy`` along ``field`` at ``x`` (autograd, twice)."""
    e = energy(x).sum()
    (grad,) = torch.autograd.grad(e, x, create_graph=True)
    v = field(x)
    rate = (grad * v).sum(dim=(-1, -2))
    norm = grad.flatten(-2).norm(dim=-1) * v.flatten(-2).norm(dim=-1)
    return rate, rate / norm.clamp_min(1e-300)


def adversarial_energy_rate(
    energy: Callable[[Tensor], Tensor],
    field: Callable[[Tensor], Tensor],
    x0: Tensor,
    *,
    steps: int = 200,
    lr: float = 0.03,
) -> AdversarialSearch:
    r"""Search for configurations where an energy falls fastest along a field on the sphere.

    From each random start ``x0`` ``(starts, n, d)`` (unit tokens), Adam minimises the cosine
    :math:`\frac{d\mathcal E/dt}{\|\nabla\mathcal E\|\,\|\dot x\|}` over the configuration,
    parametrised as :math:`x = y/\|y\|` row by row (so it stays on the sphere). ``energy`` maps
    ``(..., n, d)`` to ``(...)`` and must be twice differentiable by autograd; ``field`` maps
    ``(..., n, d)`` to the velocity (same shape), e.g. :func:`sphere_field`. A claim that the rate
    never falls below zero survives only if the smallest cosine found stays at or above zero
    (up to round-off).
    """
    x0 = _tokens(x0, "x0")
    if x0.dim() != 3:
        raise ValueError(f"x0 must be (starts, n, d), got {tuple(x0.shape)}")
    steps = C.positive_int(steps, "steps")
    lr = C.positive(lr, "lr")
    y = x0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([y], lr=lr)
    best = torch.full((x0.shape[0],), math.inf, dtype=x0.dtype)
    best_x = x0.detach().clone()
    start_cos = None
    for _ in range(steps + 1):
        x = y / y.norm(dim=-1, keepdim=True)
        _, cos = _cosine(energy, field, x)
        c = cos.detach()
        if start_cos is None:
            start_cos = c.clone()
        better = c < best
        best = torch.where(better, c, best)
        best_x[better] = x.detach()[better]
        opt.zero_grad()
        cos.sum().backward()
        opt.step()
    k = int(best.argmin())
    xb = best_x[k]
    rate, _ = energy_rate(energy, xb, field(xb))
    return AdversarialSearch(start_cos, best, xb, float(rate))


# --------------------------------------------------------------------------------------------
# Kernels inside chapter 2's factored layer
# --------------------------------------------------------------------------------------------


class KernelFactoredAttention(FactoredAttention):
    r"""Chapter 2's factored layer with its positional softmax replaced by a normalised kernel.

    .. math:: A_{ij} = \frac{\kappa(p_i, r_j)}{\sum_{l\neq i}\kappa(p_i, r_l)}\ (j\neq i),\ A_{ii}=0,
              \qquad z_i(a) = \sum_{j\neq i} A_{ij}(V x_j)_a + b_i(a),

    with learned query and key position embeddings :math:`p_i, r_j\in\mathbb R^m` (``(L, m)``),
    a colour map :math:`V` (``(C, C)``) and fields :math:`b` (``(L, C)``). The weights are chapter
    4's kernel smoother :func:`lib.kernels.kernel_attention` of the embeddings with the identity as
    values. With :class:`lib.kernels.ExpDot` and :math:`m\ge L-1` this is the softmax layer of
    chapter 2 (any logit matrix :math:`p_i\cdot r_j` is reachable); a feature-map kernel with
    :math:`D` features gives weights of rank at most :math:`D`. The forward pass, the loss and the
    training routines (:func:`lib.potts.fit_lbfgs`, :func:`lib.potts.fit_with_validation`) are
    chapter 2's. One head.

    Parameters
    ----------
    L, C_
        Number of sites and of colours.
    kernel
        Any :class:`lib.kernels.Kernel` on :math:`\mathbb R^m`.
    dim
        Embedding dimension :math:`m` (default ``L``).
    init_scale
        Standard deviation of the initial embeddings and of :math:`V`.
    generator
        Source of the initial parameters (default: seed 0).
    """

    def __init__(
        self,
        L: int,
        C_: int,
        kernel: Kernel,
        *,
        dim: int | None = None,
        init_scale: float = 0.1,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        if not isinstance(kernel, Kernel):
            raise TypeError(
                f"kernel must be a lib.kernels.Kernel, got {type(kernel).__name__}"
            )
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        super().__init__(
            L,
            C_,
            n_heads=1,
            attention="softmax",
            init_scale=init_scale,
            generator=g,
            dtype=dtype,
        )
        m = L if dim is None else C.positive_int(dim, "dim")
        self.kernel, self.dim = kernel, m
        self.a.requires_grad_(
            False
        )  # the free logits of the parent are replaced by the kernel
        self.p = torch.nn.Parameter(
            init_scale * torch.randn(L, m, generator=g, dtype=dtype)
        )
        self.r = torch.nn.Parameter(
            init_scale * torch.randn(L, m, generator=g, dtype=dtype)
        )
        self.register_buffer("eye", torch.eye(L, dtype=dtype))
        self.register_buffer("offdiag", ~torch.eye(L, dtype=torch.bool))

    def weights(self) -> Tensor:
        """Positional weights :math:`A_{ij}`, ``(1, L, L)``, rows summing to one, diagonal zero."""
        return kernel_attention(
            self.p, self.r, self.eye, self.kernel, mask=self.offdiag
        ).unsqueeze(0)

    def penalty(self) -> Tensor:
        """Squared norm of the embeddings and of :math:`V` (for l2 regularisation)."""
        return (self.p**2).sum() + (self.r**2).sum() + (self.V**2).sum()


# --------------------------------------------------------------------------------------------
# One cloud as a Potts model
# --------------------------------------------------------------------------------------------


def potts_view(x: Tensor, *, beta: float) -> tuple[PottsModel, Tensor]:
    r"""A Potts model whose conditionals are the attention weights of the cloud ``x`` ``(n, d)``.

    Sites are the :math:`n` tokens and colours the :math:`n` token indices; the configuration
    gives every token its own colour, :math:`s = (0, 1, \dots, n-1)`. With couplings
    :math:`J_{ij} = \langle x_i, x_j\rangle` (:math:`i\ne j`), :math:`U = I_n` and fields
    :math:`h_i(a) = \beta\|x_i\|^2\,[a = i]`,

    .. math:: P(s_i = a\mid s_{\setminus i}) = \mathrm{softmax}_a\Big(\beta\sum_{j\neq i}J_{ij}U_{a s_j} + h_i(a)\Big)
              = \mathrm{softmax}_a\big(\beta\langle x_i, x_a\rangle\big),

    the softmax attention weights of token :math:`i`. Returns ``(model, s)`` for
    :func:`lib.potts.conditional_logits` (``s`` has shape ``(1, n)``).
    """
    x = _tokens(x)
    if x.dim() != 2:
        raise ValueError(f"x must be one cloud (n, d), got {tuple(x.shape)}")
    beta = C.positive(beta, "beta")
    n = x.shape[0]
    if n < 2:
        raise ValueError("a Potts model needs at least 2 tokens")
    G = x @ x.T
    J = G - torch.diag(torch.diagonal(G))
    J = 0.5 * (J + J.T)  # exact symmetry against round-off
    h = beta * torch.diag(torch.diagonal(G))
    model = PottsModel(J, torch.eye(n, dtype=x.dtype), beta, h)
    return model, torch.arange(n).unsqueeze(0)
