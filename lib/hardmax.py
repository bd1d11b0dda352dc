r"""Pure-attention hardmax transformers: the layer map, leaders, clustering (chapter 5).

The model of :cite:t:`alcalde2025clustering` (arXiv:2407.01602, Sec. 2; code: the authors'
``hardmaxDynamics``). Tokens :math:`z_1,\dots,z_n\in\mathbb R^d` are updated by one shared layer,
applied :math:`K` times, with no feed-forward sublayer:

.. math::

    C_i(Z) = \operatorname*{arg\,max}_{j} \langle A z_i, z_j\rangle \quad(\text{a set: ties kept}),
    \qquad
    z_i^{k+1} = z_i^k + \frac{\alpha}{1+\alpha}\Big(\frac{1}{|C_i(Z^k)|}\sum_{j\in C_i(Z^k)} z_j^k - z_i^k\Big),

i.e. hardmax self-attention with :math:`Q=A`, :math:`K=V=I` and step :math:`\alpha`, followed by the
normalisation by :math:`1+\alpha`; each update is a convex combination, so the convex hull of the
tokens can only shrink. Token :math:`i` is a *leader* at layer :math:`k` when
:math:`i\in C_i(Z^k)`.

Ties and tolerances
-------------------
Ties are decided on the *positions*, not on the size of the scores. For row :math:`i` let
:math:`r` be a maximiser of the scores. Key :math:`j` belongs to :math:`C_i` when

.. math:: \langle A z_i, z_j - z_r\rangle \;\ge\; -\tau\,\|A z_i\|\,\|z_j - z_r\|,
          \qquad \tau = \texttt{tie\_rtol},

i.e. when :math:`z_j` lies on the supporting hyperplane through :math:`z_r` with normal
:math:`Az_i` up to an *angle* :math:`\tau`. The difference :math:`z_j-z_r` is formed before the
inner product, so the test is as accurate for two points :math:`10^{-15}` apart as for two points
far apart: a follower converging to a leader from inside the hull never enters a tie set,
however close it gets (a tolerance on the score difference, relative to the scores, lets every
converged follower in once it is within that tolerance, and the tie point it then attends to
drifts). The maximiser :math:`r` itself is found with the same accurate pairwise comparisons,
among the keys whose float score is within round-off of the row maximum. The default
(:func:`default_tie_rtol`) is ``1e-12`` in float64 and ``1e-5`` in float32: well above the
round-off of a ``d``-term inner product, far below the angles of a generic configuration. Exact
ties (symmetric configurations, tokens on one face of the hull, repeated words that share one
embedding) are kept as ties. On lattice inputs the layer agrees with exact rational arithmetic.

*Coinciding tokens.* Tokens at the same position up to round-off (closer than
``16 eps max|z|``) score identically and cannot be told apart, and the direction from which a
follower approached its leader is lost once it is within a few units of round-off of it. When a
tie set spans several distinct positions, the layer therefore gives each distinct position the
same weight, split equally among the tokens there (in the model a token counts once; the two
conventions differ only when tokens coincide *and* tie with other positions: a follower that has
reached its leader to the last bits, or repeated tokens on a face of the hull). Within one
position, and for :func:`attention_sets`, every token counts.

Tokens that converge to a leader come within round-off of it. Counting is therefore done on
*distinct positions* (:func:`distinct_points`, single linkage at ``atol``), and a *strict leader*
(:func:`strict_leaders`) is a leader whose argmax set contains only tokens at its own position.
A point where a token attends to several distinct leaders with ties (e.g. an edge midpoint) is a
*tie point*: it satisfies :math:`i\in C_i` in the limit, but it is not a strict leader.

Input rules: ``z`` holds at least one token of dimension at least one; ``A`` must be symmetric
positive definite (the assumption of the paper's theorem; anything else raises ``ValueError``);
``alpha`` is any real number type (Python, NumPy or a scalar tensor) greater than 0.

Used by chapter 5 (``chapters/ch5_hardmax.md``) and by :mod:`lib.sentiment`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import _checks as C
from .attention import softmax_attention

Tensor = torch.Tensor

__all__ = [
    "ClusteringReport",
    "Dynamics",
    "LimitPoints",
    "attention_sets",
    "classify_limit_points",
    "clustering_report",
    "default_tie_rtol",
    "distinct_points",
    "fit_rate",
    "hardmax_layer",
    "hull_volume",
    "leader_positions",
    "leaders",
    "padding_mask",
    "random_spd",
    "run_dynamics",
    "scores",
    "softmax_layer",
    "strict_leaders",
    "token_mask",
]


def default_tie_rtol(dtype: torch.dtype) -> float:
    r"""Default angle tolerance of the tie test (module docstring): ``1e-12`` for float64, ``1e-5``
    for float32 and lower precisions."""
    return 1e-12 if dtype == torch.float64 else 1e-5


def _alpha(alpha: float | Tensor) -> float | Tensor:
    if isinstance(alpha, torch.Tensor):
        if alpha.numel() != 1:
            raise ValueError(f"alpha must be a scalar, got shape {tuple(alpha.shape)}")
        if not bool(torch.isfinite(alpha).all()) or not bool((alpha > 0).all()):
            raise ValueError(f"alpha must be a finite number > 0, got {alpha.item()!r}")
        return alpha.reshape(())
    return C.positive(alpha, "alpha")


def _z(z: object) -> Tensor:
    z = C.float_tensor(z, "z", min_dim=2)
    if z.shape[-2] == 0:
        raise ValueError(f"z must hold at least one token, got shape {tuple(z.shape)} (an empty cloud)")
    if z.shape[-1] == 0:
        raise ValueError(f"z must have token dimension d >= 1, got shape {tuple(z.shape)}")
    return z


def _A(A: object | None, z: Tensor) -> Tensor | None:
    if A is None:
        return None
    A = C.float_tensor(A, "A", min_dim=2)
    d = z.shape[-1]
    if A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be a square (d, d) matrix, got shape {tuple(A.shape)}")
    if A.shape[0] != d:
        raise ValueError(f"A must be ({d}, {d}) to match tokens of dimension {d}, got {tuple(A.shape)}")
    C.same_dtype([z, A], ["z", "A"])
    Ad = A.detach()
    asym = float((Ad - Ad.T).abs().max())
    if asym > 64 * torch.finfo(A.dtype).eps * max(1.0, float(Ad.abs().max())):
        raise ValueError(f"A must be symmetric positive definite (the theorem's assumption); max|A - A^T| = {asym:.3g}")
    if int(torch.linalg.cholesky_ex(0.5 * (Ad + Ad.T)).info) != 0:
        raise ValueError("A must be symmetric positive definite (the theorem's assumption); A is not positive definite")
    return A


def _rtol(tie_rtol: float | None, z: Tensor) -> float:
    return default_tie_rtol(z.dtype) if tie_rtol is None else C.nonneg(tie_rtol, "tie_rtol")


def _queries(z: Tensor, A: Tensor | None) -> Tensor:
    return z if A is None else z @ A.transpose(-1, -2)


def _argmax_sets(qz: Tensor, z: Tensor, rtol: float, mask: Tensor | None) -> Tensor:
    r"""Boolean ``(..., n, m)``: :math:`j\in C_i`, decided by the pairwise angle test of the module docstring.

    ``qz``: queries :math:`Az_i` ``(..., n, d)``; ``z``: keys ``(..., m, d)``. Only keys whose float
    score is within round-off (plus the angle tolerance) of the row maximum are candidates; rows with
    a single candidate (the generic case) cost nothing beyond the score matrix. In a row with ``c``
    candidates each pair is compared once (``c^2`` inner products of differences).
    """
    qz, z = qz.detach(), z.detach()
    n, m, d = qz.shape[-2], z.shape[-2], z.shape[-1]
    batch = torch.broadcast_shapes(qz.shape[:-2], z.shape[:-2])
    qf = qz.expand(*batch, n, d).reshape(-1, n, d)
    zf = z.expand(*batch, m, d).reshape(-1, m, d)
    s = qf @ zf.transpose(-1, -2)
    if mask is not None:
        C.bool_mask(mask, n, m, batch)
        allowed = mask.expand(*batch, n, m).reshape(-1, n, m)
        s = s.masked_fill(~allowed, float("-inf"))
    top = s.max(dim=-1, keepdim=True).values
    qn = qf.norm(dim=-1, keepdim=True)  # (B, n, 1)
    zmax = zf.norm(dim=-1).amax(dim=-1, keepdim=True).unsqueeze(-1)  # (B, 1, 1)
    eps = torch.finfo(s.dtype).eps
    window = (2.0 * rtol + 8.0 * (d + 2) * eps) * qn * zmax
    sets = s >= top - window  # candidates; refined below where a row has several
    count = sets.sum(dim=-1)
    if not bool((count >= 2).any()):
        return sets.reshape(*batch, n, m)
    # stage 1: every candidate against one reference per row, moved up until nothing beats it
    bb, ii, jj = (sets & (count >= 2).unsqueeze(-1)).nonzero(as_tuple=True)
    row = bb * n + ii
    q_e, qn_e = qf[bb, ii], qn[bb, ii, 0]
    ref = s.argmax(dim=-1).reshape(-1)  # a float maximiser per row

    def gaps(ref: Tensor) -> tuple[Tensor, Tensor]:
        diff = zf[bb, jj] - zf[bb, ref[row]]  # formed first: accurate for close points
        return (q_e * diff).sum(-1), rtol * qn_e * diff.norm(dim=-1)

    for _ in range(32):  # each pass moves the reference strictly up; a few passes suffice
        D, tol = gaps(ref)
        beats = D > tol
        if not bool(beats.any()):
            break
        score = torch.where(beats, D, torch.full_like(D, -float("inf")))
        best = torch.full((qf.shape[0] * n,), -float("inf"), dtype=D.dtype, device=D.device)
        best = best.scatter_reduce(0, row, score, reduce="amax")
        pick = beats & (score == best[row])
        ref = ref.clone()
        ref[row[pick]] = jj[pick]
    else:
        D, tol = gaps(ref)
    surv = D >= -tol
    sets[bb, ii, jj] = surv
    # stage 2: survivors of one row compared pairwise (a follower near the face, close to another
    # survivor but far from the reference, is beaten by that neighbour)
    count = sets.sum(dim=-1)
    multi = (count >= 2).nonzero(as_tuple=True)
    if len(multi[0]) == 0:
        return sets.reshape(*batch, n, m)
    cmax = int(count[multi].max())
    rb, ri = multi
    idx = torch.topk(sets[rb, ri].to(torch.int8), cmax, dim=-1).indices  # (R, c) survivors
    valid = torch.arange(cmax, device=s.device) < count[multi].unsqueeze(-1)
    keep = torch.zeros(len(rb), cmax, dtype=torch.bool, device=s.device)
    step = max(1, (1 << 22) // max(1, cmax * cmax * d))  # rows per chunk: bounded memory
    for r0 in range(0, len(rb), step):
        sl = slice(r0, r0 + step)
        P = zf[rb[sl].unsqueeze(-1), idx[sl]]  # (r, c, d)
        diff = P.unsqueeze(-3) - P.unsqueeze(-2)  # [r, j, l] = z_l - z_j
        q = qf[rb[sl], ri[sl]]  # (r, d)
        Dp = (diff @ q.unsqueeze(-1).unsqueeze(-3)).squeeze(-1)
        tolp = rtol * qn[rb[sl], ri[sl]].unsqueeze(-1) * diff.norm(dim=-1)
        beaten = ((Dp > tolp) & valid[sl].unsqueeze(-2)).any(dim=-1)
        keep[sl] = valid[sl] & ~beaten
    # safeguard (rtol = 0 and round-off cycles): an empty set falls back to the reference
    empty = ~keep.any(dim=-1)
    rows = torch.zeros(len(rb), m, dtype=torch.bool, device=s.device)
    rows.scatter_(-1, idx, keep)
    if bool(empty.any()):
        rows[empty, ref[rb * n + ri][empty]] = True
    sets[rb, ri] = rows
    return sets.reshape(*batch, n, m)


def _tie_weights(sets: Tensor, z: Tensor) -> Tensor:
    r"""Row weights from the argmax sets: equal weight per distinct position, split equally among
    the tokens there (module docstring, *coinciding tokens*). Tokens closer than a few units of
    round-off (``16 eps max|z|``) count as one position."""
    n, m, d = sets.shape[-2], sets.shape[-1], z.shape[-1]
    w = sets.to(z.dtype)
    count = w.sum(dim=-1, keepdim=True)
    w = w / count
    multi = (count.squeeze(-1) >= 2).reshape(-1).nonzero(as_tuple=True)[0]
    if len(multi) == 0:
        return w
    batch = sets.shape[:-2]
    zf = z.detach().expand(*batch, m, d).reshape(-1, m, d)
    sf, wf = sets.reshape(-1, m), w.reshape(-1, m).clone()
    rb = multi // n  # batch index of each row
    c = int(count.reshape(-1)[multi].max())
    idx = torch.topk(sf[multi].to(torch.int8), c, dim=-1).indices  # (R, c) set members
    valid = torch.arange(c, device=z.device) < count.reshape(-1)[multi].unsqueeze(-1)
    tau = 16 * torch.finfo(z.dtype).eps * zf.norm(dim=-1).amax(dim=-1).clamp_min(1.0)  # (B,)
    step = max(1, (1 << 22) // max(1, c * c * d))
    for r0 in range(0, len(multi), step):
        sl = slice(r0, r0 + step)
        P = zf[rb[sl].unsqueeze(-1), idx[sl]]  # (r, c, d)
        near = (P.unsqueeze(-2) - P.unsqueeze(-3)).norm(dim=-1) <= tau[rb[sl]][:, None, None]
        near = near & valid[sl].unsqueeze(-1) & valid[sl].unsqueeze(-2)
        inv = valid[sl].to(z.dtype) / near.sum(-1).clamp_min(1).to(z.dtype)
        row = torch.zeros(inv.shape[0], m, dtype=z.dtype, device=z.device)
        row.scatter_(-1, idx[sl], inv / inv.sum(-1, keepdim=True))
        wf[multi[sl]] = row
    return wf.reshape(w.shape)


def scores(z: Tensor, *, A: Tensor | None = None) -> Tensor:
    r"""Attention scores :math:`s_{ij}=\langle A z_i, z_j\rangle`, shape ``(..., n, n)``.

    ``z``: tokens ``(..., n, d)``; ``A``: the ``(d, d)`` key-query matrix (default: identity).
    """
    z = _z(z)
    A = _A(A, z)
    return _queries(z, A) @ z.transpose(-1, -2)


def attention_sets(
    z: Tensor, *, A: Tensor | None = None, tie_rtol: float | None = None, mask: Tensor | None = None
) -> Tensor:
    r"""Boolean ``(..., n, n)`` membership :math:`[j\in C_i(Z)]` of the hardmax argmax sets.

    ``mask`` (boolean, broadcastable to ``(..., n, n)``, ``True`` = may attend) restricts the keys;
    see :func:`padding_mask`. Ties are decided by the angle test with tolerance ``tie_rtol``
    (module docstring).
    """
    z = _z(z)
    A = _A(A, z)
    return _argmax_sets(_queries(z, A), z, _rtol(tie_rtol, z), mask)


def hardmax_layer(
    z: Tensor, *, alpha: float | Tensor, A: Tensor | None = None, tie_rtol: float | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    r"""One layer :math:`z_i\mapsto z_i+\frac{\alpha}{1+\alpha}(\mathrm{mean}_{j\in C_i} z_j - z_i)`.

    Parameters
    ----------
    z
        Tokens ``(..., n, d)`` (:math:`Z^k`), ``n >= 1``, ``d >= 1``.
    alpha
        Step :math:`\alpha>0` (Python/NumPy number or scalar tensor, e.g. a trained parameter).
    A
        Symmetric positive definite key-query matrix ``(d, d)``, default identity (the setting of
        the paper's experiments).
    tie_rtol
        Angle tolerance of the tie test, default :func:`default_tie_rtol` (module docstring).
    mask
        Optional boolean attention mask ``(..., n, n)`` (``True`` = may attend).

    The mean over :math:`C_i` weighs distinct positions equally (module docstring, *coinciding
    tokens*); without coinciding tokens it is the plain mean of the model.
    """
    z = _z(z)
    alpha = _alpha(alpha)
    A = _A(A, z)
    sets = _argmax_sets(_queries(z, A), z, _rtol(tie_rtol, z), mask)
    w = _tie_weights(sets, z)
    return z + (alpha / (1 + alpha)) * (w @ z - z)


def softmax_layer(
    z: Tensor, *, alpha: float | Tensor, temperature: float, A: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    r"""The same layer with softmax attention at temperature :math:`T`:

    .. math:: z_i\mapsto z_i+\frac{\alpha}{1+\alpha}\Big(\sum_j \frac{e^{\langle A z_i,z_j\rangle/T}}{\sum_l e^{\langle A z_i,z_l\rangle/T}}z_j - z_i\Big).

    As :math:`T\to0` it tends to :func:`hardmax_layer` (ties shared uniformly). Computed by
    :func:`lib.attention.softmax_attention` (``beta = 1/T``, the fused kernel, numerically stable
    at any temperature). This is how the authors train their classifier (``T = 1e-3``).
    """
    z = _z(z)
    alpha = _alpha(alpha)
    T = C.positive(temperature, "temperature")
    A = _A(A, z)
    att = softmax_attention(_queries(z, A), z, z, beta=1.0 / T, mask=mask)
    return z + (alpha / (1 + alpha)) * (att - z)


def leaders(
    z: Tensor, *, A: Tensor | None = None, tie_rtol: float | None = None, mask: Tensor | None = None
) -> Tensor:
    r"""Boolean ``(..., n)``: token :math:`i` is a leader, :math:`i\in C_i(Z)`, i.e.
    :math:`\langle Az_i,z_i\rangle\ge\langle Az_i,z_j\rangle` for every allowed :math:`j` (up to the
    tie tolerance). With a ``mask``, a token that may not attend to itself (padding) is no leader."""
    sets = attention_sets(z, A=A, tie_rtol=tie_rtol, mask=mask)
    return torch.diagonal(sets, dim1=-2, dim2=-1)


def strict_leaders(
    z: Tensor, *, A: Tensor | None = None, tie_rtol: float | None = None, atol: float = 1e-6,
    mask: Tensor | None = None,
) -> Tensor:
    r"""Boolean ``(..., n)``: leaders whose argmax set holds only tokens within ``atol`` of themselves.

    Such a token is a fixed point of the layer map up to round-off (it attends to its own position
    only). Tie points (a token attending to several distinct leaders) are excluded.
    """
    z = _z(z)
    atol = C.positive(atol, "atol")
    sets = attention_sets(z, A=A, tie_rtol=tie_rtol, mask=mask)
    far = torch.cdist(z, z) > atol
    return torch.diagonal(sets, dim1=-2, dim2=-1) & ~(sets & far).any(dim=-1)


def token_mask(lengths: Tensor, n: int) -> Tensor:
    r"""Boolean ``(B, n)``: ``True`` for the first ``lengths[b]`` positions (real tokens), ``False`` for padding."""
    if not isinstance(lengths, torch.Tensor) or lengths.dtype not in (torch.int32, torch.int64):
        raise TypeError("lengths must be an integer torch.Tensor")
    C.positive_int(n, "n")
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D, got shape {tuple(lengths.shape)}")
    if bool((lengths < 1).any()) or bool((lengths > n).any()):
        raise ValueError(f"lengths must lie in [1, {n}]")
    return torch.arange(n, device=lengths.device) < lengths.unsqueeze(-1)


def padding_mask(lengths: Tensor, n: int) -> Tensor:
    r"""Attention mask ``(B, n, n)`` for right-padded sequences: ``mask[b, i, j] = j < lengths[b]``.

    Every token (padding included) attends only to the real tokens of its sequence, so padding
    never influences a real token; padding positions are then ignored by the pooling
    (:func:`token_mask`). The authors instead let padding tokens take part in attention.
    """
    keys = token_mask(lengths, n)
    return keys.unsqueeze(-2).expand(-1, n, -1)


@dataclass
class Dynamics:
    r"""Output of :func:`run_dynamics`.

    trajectory
        ``(K+1, ..., n, d)``: :math:`Z^0,\dots,Z^K`.
    increments
        ``(K, ...)``: :math:`\max_i\|z_i^{k+1}-z_i^k\|` per layer (and per batch element).
    leaders
        ``(K+1, ..., n)`` boolean: :math:`i\in C_i(Z^k)` (:func:`leaders`).
    """

    trajectory: Tensor
    increments: Tensor
    leaders: Tensor


def run_dynamics(
    z0: Tensor, *, alpha: float | Tensor, layers: int, A: Tensor | None = None, tie_rtol: float | None = None,
    mask: Tensor | None = None, temperature: float | None = None,
) -> Dynamics:
    r"""Apply the layer ``layers`` times and keep the whole trajectory.

    ``temperature=None`` runs the hardmax dynamics (:func:`hardmax_layer`); a positive
    ``temperature`` runs :func:`softmax_layer`. ``z0``: ``(..., n, d)``.
    """
    z = _z(z0)
    C.positive_int(layers, "layers")
    traj = [z]
    for _ in range(layers):
        if temperature is None:
            z = hardmax_layer(z, alpha=alpha, A=A, tie_rtol=tie_rtol, mask=mask)
        else:
            z = softmax_layer(z, alpha=alpha, temperature=temperature, A=A, mask=mask)
        traj.append(z)
    tr = torch.stack(traj)
    inc = (tr[1:] - tr[:-1]).norm(dim=-1).amax(dim=-1)
    lead = leaders(tr, A=A, tie_rtol=tie_rtol, mask=mask)  # all layers in one batched call
    return Dynamics(trajectory=tr, increments=inc, leaders=lead)


def _np(x: object, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=float)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (m, d), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return a


def distinct_points(x: Tensor | np.ndarray, *, atol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    r"""Group points closer than ``atol`` (single linkage): returns ``(labels (m,), centers (c, d))``.

    ``centers[c]`` is the mean of group ``c``; labels are numbered in order of first appearance.
    """
    a = _np(x, "x")
    atol = C.positive(atol, "atol")
    if len(a) == 0:
        return np.zeros(0, dtype=int), np.zeros((0, a.shape[1]))
    if len(a) == 1:
        return np.zeros(1, dtype=int), a.copy()
    from scipy.cluster.hierarchy import fcluster, linkage

    raw = fcluster(linkage(a, method="single"), t=atol, criterion="distance")
    _, first, labels = np.unique(raw, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    labels = order[labels]
    centers = np.stack([a[labels == c].mean(axis=0) for c in range(labels.max() + 1)])
    return labels, centers


def leader_positions(
    z: Tensor, *, A: Tensor | None = None, tie_rtol: float | None = None, atol: float = 1e-6
) -> np.ndarray:
    r"""Distinct positions ``(m, d)`` of the strict leaders of one configuration ``z`` ``(n, d)``."""
    z = _z(z)
    if z.dim() != 2:
        raise ValueError(f"z must be one configuration (n, d), got shape {tuple(z.shape)}")
    sl = strict_leaders(z, A=A, tie_rtol=tie_rtol, atol=atol)
    return distinct_points(z[sl], atol=atol)[1]


@dataclass
class LimitPoints:
    r"""Classification of the distinct points of a (converged) configuration (:func:`classify_limit_points`).

    centers
        ``(c, d)`` distinct positions.
    kind
        ``(c,)`` strings: ``"leader"`` (a strict leader's position), ``"tie"`` (a tie point on the
        boundary of the leaders' hull: it attends to at least two distinct leaders, is their mean,
        and lies on the supporting hyperplane with normal :math:`Ac`), or ``"other"``.
    boundary_gap
        ``(c,)``: :math:`\max_j\langle Ac, z_j\rangle-\langle Ac,c\rangle` (zero on the boundary).
    fixed_point_error
        ``(c,)``: distance from ``c`` to the convex hull of the members of its argmax set that sit
        elsewhere (zero when ``c`` is a weighted mean of the tokens it ties with, i.e. a fixed
        point of the layer map).
    """

    centers: np.ndarray
    kind: np.ndarray
    boundary_gap: np.ndarray
    fixed_point_error: np.ndarray

    @property
    def n_leaders(self) -> int:
        return int((self.kind == "leader").sum())

    @property
    def n_ties(self) -> int:
        return int((self.kind == "tie").sum())

    @property
    def n_other(self) -> int:
        return int((self.kind == "other").sum())


def _hull_residual(points: np.ndarray, x: np.ndarray) -> float:
    """Distance from ``x`` to the convex hull of ``points`` (non-negative least squares with a
    heavily weighted sum-to-one row)."""
    from scipy.optimize import nnls

    w = 1e3 * max(1.0, float(np.abs(points).max()))
    M = np.vstack([points.T, w * np.ones(len(points))])
    lam, _ = nnls(M, np.append(x, w))
    return float(np.linalg.norm(points.T @ lam / lam.sum() - x))


def classify_limit_points(
    z: Tensor, *, A: Tensor | None = None, tie_rtol: float | None = None, atol: float = 1e-6
) -> LimitPoints:
    r"""Classify the distinct points of one configuration ``z`` ``(n, d)`` (typically after many layers).

    A point is a ``"leader"`` if a strict leader sits there; a ``"tie"`` if its argmax set (with
    the tie tolerance widened to ``atol`` relative) contains at least two distinct leader positions,
    the point lies in their convex hull within ``atol`` (a weighted mean of the tokens it ties with,
    as at a fixed point of the layer map) and the hyperplane
    with normal :math:`Ac` through the point supports the configuration (boundary gap below
    ``atol`` relative): then the point lies on a face of the leaders' convex hull.
    """
    z = _z(z)
    if z.dim() != 2:
        raise ValueError(f"z must be one configuration (n, d), got shape {tuple(z.shape)}")
    atol = C.positive(atol, "atol")
    _, centers = distinct_points(z, atol=atol)
    lead_pos = leader_positions(z, A=A, tie_rtol=tie_rtol, atol=atol)
    c = torch.as_tensor(centers, dtype=z.dtype)
    Ac = _queries(c, _A(A, z))
    s = Ac @ z.T  # (c, n)
    smax = s.max(dim=1).values
    self_s = (Ac * c).sum(-1)
    scale = s.abs().amax(dim=1).clamp_min(1.0)
    gap = (smax - self_s).numpy()
    near = s >= (smax - atol * scale).unsqueeze(-1)  # widened argmax sets
    kinds, fpe = [], []
    for ci in range(len(centers)):
        members = z[near[ci]].numpy()
        others = members[np.linalg.norm(members - centers[ci], axis=1) > atol]
        fpe.append(_hull_residual(others, centers[ci]) if len(others) else 0.0)
        if len(lead_pos) and np.min(np.linalg.norm(lead_pos - centers[ci], axis=1)) <= atol:
            kinds.append("leader")
            continue
        if len(others) == 0 or len(lead_pos) == 0:
            kinds.append("other")
            continue
        dl = np.linalg.norm(others[:, None, :] - lead_pos[None, :, :], axis=-1)
        n_lead = int((dl.min(axis=0) <= atol).sum())
        all_leaders = bool((dl.min(axis=1) <= atol).all())
        on_boundary = abs(gap[ci]) <= atol * float(scale[ci])
        kinds.append("tie" if (n_lead >= 2 and all_leaders and fpe[-1] <= atol and on_boundary) else "other")
    return LimitPoints(centers=centers, kind=np.array(kinds), boundary_gap=gap, fixed_point_error=np.array(fpe))


def hull_volume(points: Tensor | np.ndarray) -> float:
    r"""Volume (area in 2-D) of the convex hull of ``points`` ``(m, d)`` via :class:`scipy.spatial.ConvexHull`.

    Returns ``0.0`` for degenerate sets (fewer than ``d + 1`` affinely independent points).
    """
    a = _np(points, "points")
    from scipy.spatial import ConvexHull, QhullError

    if len(a) <= a.shape[1]:
        return 0.0
    try:
        return float(ConvexHull(a).volume)
    except QhullError:
        return 0.0


def random_spd(d: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float64, eps: float = 0.1) -> Tensor:
    r"""A random symmetric positive definite ``(d, d)`` matrix :math:`A = MM^\top/d + \varepsilon I`, :math:`M_{ij}\sim N(0,1)`."""
    C.positive_int(d, "d")
    eps = C.positive(eps, "eps")
    if not isinstance(generator, torch.Generator):
        raise TypeError("generator must be a torch.Generator")
    M = torch.randn(d, d, generator=generator, dtype=dtype)
    return M @ M.T / d + eps * torch.eye(d, dtype=dtype)


@dataclass
class ClusteringReport:
    r"""What :func:`clustering_report` measures on one hardmax trajectory.

    converged_layer
        First layer :math:`k` with :math:`\max_i\|z_i^{k+1}-z_i^k\| <` ``conv_tol`` (``-1`` if never).
    final_increment
        :math:`\max_i\|z_i^{K}-z_i^{K-1}\|`.
    limit
        :class:`LimitPoints` of :math:`Z^K`.
    n_distinct_leaders
        ``(K+1,)`` number of distinct strict-leader positions at each layer.
    initial_leaders_kept
        Every strict leader of layer 0 is a leader (:math:`i\in C_i`) at every layer.
    initial_leader_drift
        :math:`\max_{k,\,i\in L_0}\|z_i^k-z_i^0\|` over the strict leaders :math:`L_0` of layer 0.
    """

    converged_layer: int
    final_increment: float
    limit: LimitPoints
    n_distinct_leaders: np.ndarray
    initial_leaders_kept: bool
    initial_leader_drift: float

    @property
    def emerged(self) -> int:
        """Distinct leaders gained between layer 0 and the last layer."""
        return int(self.n_distinct_leaders[-1] - self.n_distinct_leaders[0])

    @property
    def leader_count_monotone(self) -> bool:
        """The number of distinct leaders never decreases from one layer to the next."""
        return bool((np.diff(self.n_distinct_leaders) >= 0).all())


def clustering_report(
    dyn: Dynamics, *, A: Tensor | None = None, tie_rtol: float | None = None, atol: float = 1e-6,
    conv_tol: float = 1e-10,
) -> ClusteringReport:
    r"""Measure convergence, leaders and limit points of one trajectory ``dyn`` (:func:`run_dynamics`
    on a single configuration ``(n, d)``): the quantities of the paper's main theorem (chapter 5)."""
    tr = dyn.trajectory
    if tr.dim() != 3:
        raise ValueError("clustering_report needs the trajectory of one configuration (K+1, n, d)")
    conv_tol = C.positive(conv_tol, "conv_tol")
    below = torch.nonzero(dyn.increments < conv_tol)
    conv = int(below[0, 0]) if len(below) else -1
    strict = strict_leaders(tr, A=A, tie_rtol=tie_rtol, atol=atol)  # (K+1, n), one batched call
    trn = tr.detach().cpu().numpy()
    counts = np.array([len(distinct_points(trn[k][strict[k].numpy()], atol=atol)[1]) for k in range(len(trn))])
    L0 = strict[0]
    kept = bool(dyn.leaders[:, L0].all())
    drift = float((tr[:, L0] - tr[0, L0]).norm(dim=-1).max()) if bool(L0.any()) else 0.0
    return ClusteringReport(
        converged_layer=conv, final_increment=float(dyn.increments[-1]),
        limit=classify_limit_points(tr[-1], A=A, tie_rtol=tie_rtol, atol=atol), n_distinct_leaders=counts,
        initial_leaders_kept=kept, initial_leader_drift=drift,
    )


def fit_rate(increments: Tensor | np.ndarray, *, lo: float = 1e-9, hi: float = 1e-4) -> float:
    r"""Least-squares slope of :math:`\log\max_i\|z_i^{k+1}-z_i^k\|` against :math:`k` over the layers
    whose increment lies in ``[lo, hi]`` (the geometric tail; the theory predicts
    :math:`-\log(1+\alpha)`). Raises ``ValueError`` if fewer than 3 layers fall in the window, if
    ``lo >= hi``, or if an increment is NaN, infinite or negative (a run that blew up or a wrong
    input, which a window test would silently skip)."""
    inc = increments.detach().cpu().numpy() if isinstance(increments, torch.Tensor) else np.asarray(increments)
    if inc.ndim != 1:
        raise ValueError(f"increments must be 1-D, got shape {inc.shape}")
    inc = inc.astype(float)
    lo, hi = C.positive(lo, "lo"), C.positive(hi, "hi")
    if lo >= hi:
        raise ValueError(f"need lo < hi, got lo={lo:g}, hi={hi:g}")
    bad = ~np.isfinite(inc)
    if bad.any():
        raise ValueError(f"increments contain {int(bad.sum())} non-finite value(s) (NaN or inf), first at layer {int(np.flatnonzero(bad)[0])}")
    if (inc < 0).any():
        raise ValueError("increments must be >= 0 (they are norms)")
    k = np.flatnonzero((inc >= lo) & (inc <= hi))
    if len(k) < 3:
        raise ValueError(f"only {len(k)} layers have increments in [{lo:g}, {hi:g}]")
    return float(np.polyfit(k, np.log(inc[k]), 1)[0])
