r"""Generalised Potts models and the single layer of factored attention that learns them.

A sequence :math:`s = (s_1, \dots, s_L)`, :math:`s_i \in \{0, \dots, C-1\}` ("colours"), with one-hot
vectors :math:`x_i \in \{0,1\}^C`, is drawn from the generalised Potts model of
Rende, Gerace, Laio and Goldt (2024), whose couplings factor into a positional and a colour part,

.. math:: P(s) = \frac1Z \exp\Big(\frac{\beta}{2}\sum_{i\neq j} J_{ij}\, U_{s_i s_j} + \sum_i h_i(s_i)\Big),

with :math:`J` symmetric with zero diagonal (``(L, L)``), :math:`U` symmetric (``(C, C)``) and
optional fields :math:`h` (``(L, C)``). Its conditionals are a softmax,

.. math:: P(s_i = a \mid s_{\setminus i}) = \mathrm{softmax}_a\Big(\beta \sum_{j\neq i} J_{ij} U_{a s_j} + h_i(a)\Big),

which is one layer of *factored attention*: positional weights :math:`A_{ij}` (diagonal masked),
token values :math:`V x_j`, logits :math:`z_i(a) = \sum_{j\neq i} A_{ij} (V x_j)_a`, with
:math:`A = \beta J`, :math:`V = U`. Training that layer by masked-language modelling is
pseudo-likelihood maximisation (chapter 2, :func:`pseudo_likelihood_loss`, :func:`mlm_loss`).

Contents: the model (:class:`PottsModel`, :func:`conditional_logits`), exact enumeration for small
models (:func:`enumerate_states`, :func:`exact_marginals`), a vectorised heat-bath sampler of many
independent chains (:func:`heat_bath`), sample statistics (:func:`empirical_marginals`,
:func:`marginal_z`, :func:`hamming_fraction`), the three learners of chapter 2
(:class:`FactoredAttention`, :class:`PseudoLikelihoodPotts`, :class:`VanillaTransformer`) with their
training routines (full-batch L-BFGS, :func:`fit_lbfgs`; the one protocol every learner of claim
2.5 is trained by, :func:`train_mlm`), the general-coupling reference :func:`coupling_logits`,
and gauge fixing for comparing couplings (:func:`zero_sum_gauge`,
:func:`coupling_correlation`).

Used by chapter 2 (``chapters/ch2_potts.md``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks as C
from .attention import MultiHeadAttention, factored_weights

Tensor = torch.Tensor

__all__ = [
    "FactoredAttention",
    "PottsModel",
    "PseudoLikelihoodPotts",
    "TrainResult",
    "VanillaTransformer",
    "chain_couplings",
    "conditional_entropy",
    "conditional_entropy_per_sequence",
    "conditional_logits",
    "contact_precision",
    "contact_scores",
    "coupling_correlation",
    "coupling_logits",
    "empirical_marginals",
    "enumerate_states",
    "exact_log_probs",
    "exact_marginals",
    "fit_lbfgs",
    "fit_with_validation",
    "greedy_colouring",
    "hamming_fraction",
    "heat_bath",
    "log_weight",
    "marginal_z",
    "mask_sites",
    "masked_logits",
    "masked_site_loss",
    "mlm_loss",
    "one_hot",
    "pseudo_likelihood_loss",
    "random_colour_couplings",
    "ring_couplings",
    "symmetrize_couplings",
    "train_mlm",
    "train_mlm_select_lr",
    "train_vanilla",
    "zero_sum_gauge",
]


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


def _states(s: object, name: str = "s", C_: int | None = None) -> Tensor:
    if not isinstance(s, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer colours, got {type(s).__name__}")
    if s.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{name} must have an integer dtype (colours 0..C-1), got {s.dtype}")
    if s.dim() != 2:
        raise ValueError(f"{name} must have shape (N, L), got {tuple(s.shape)}")
    if s.numel() and (int(s.min()) < 0 or (C_ is not None and int(s.max()) >= C_)):
        raise ValueError(f"{name} must hold colours in 0..{'C-1' if C_ is None else C_ - 1}")
    return s.long()


@dataclass(frozen=True)
class PottsModel:
    r"""A generalised Potts model :math:`P(s)\propto\exp(\frac\beta2\sum_{i\neq j}J_{ij}U_{s_is_j}+\sum_i h_i(s_i))`.

    Parameters
    ----------
    J
        Positional couplings :math:`J_{ij}`, ``(L, L)``, symmetric with zero diagonal.
    U
        Colour couplings :math:`U_{ab}`, ``(C, C)``, symmetric.
    beta
        Inverse temperature :math:`\beta > 0`.
    h
        Optional fields :math:`h_i(a)`, ``(L, C)`` (default zero).

    Rende et al. (2024), eq. (1) (chapter 2).
    """

    J: Tensor
    U: Tensor
    beta: float = 1.0
    h: Tensor | None = None

    def __post_init__(self) -> None:
        J = C.float_tensor(self.J, "J", min_dim=2)
        U = C.float_tensor(self.U, "U", min_dim=2)
        C.positive(self.beta, "beta")
        if J.dim() != 2 or J.shape[0] != J.shape[1] or J.shape[0] < 2:
            raise ValueError(f"J must be a square (L, L) matrix with L >= 2, got {tuple(J.shape)}")
        if U.dim() != 2 or U.shape[0] != U.shape[1] or U.shape[0] < 2:
            raise ValueError(f"U must be a square (C, C) matrix with C >= 2, got {tuple(U.shape)}")
        tol = 1e-10 * (1.0 + float(J.abs().max()))
        if float((J - J.T).abs().max()) > tol:
            raise ValueError("J must be symmetric")
        if float(J.diagonal().abs().max()) > tol:
            raise ValueError("J must have a zero diagonal")
        if float((U - U.T).abs().max()) > 1e-10 * (1.0 + float(U.abs().max())):
            raise ValueError("U must be symmetric")
        if self.h is not None:
            h = C.float_tensor(self.h, "h", min_dim=2)
            if tuple(h.shape) != (J.shape[0], U.shape[0]):
                raise ValueError(f"h must have shape (L, C) = {(J.shape[0], U.shape[0])}, got {tuple(h.shape)}")

    @property
    def L(self) -> int:
        """Number of sites."""
        return self.J.shape[0]

    @property
    def C(self) -> int:
        """Number of colours."""
        return self.U.shape[0]

    def fields(self, dtype: torch.dtype | None = None) -> Tensor:
        """The fields :math:`h`, ``(L, C)`` (zeros when absent)."""
        dtype = dtype or self.J.dtype
        if self.h is None:
            return torch.zeros(self.L, self.C, dtype=dtype, device=self.J.device)
        return self.h.to(dtype)

    def couplings(self) -> Tensor:
        r"""The full coupling tensor :math:`W_{ij}(a,b) = \beta J_{ij} U_{ab}`, shape ``(L, C, L, C)``."""
        return self.beta * torch.einsum("ij,ab->iajb", self.J, self.U)


def ring_couplings(L: int, *, nn1: float = 1.0, nn2: float = 0.5, long_range: float = 0.75,
                   generator: torch.Generator, long_sign: float = 1.0,
                   dtype: torch.dtype = torch.float64) -> Tensor:
    r"""Positional couplings of chapter 2: a ring with local links plus one long-range link per site.

    :math:`J_{i,i\pm1} = ` ``nn1``, :math:`J_{i,i\pm2} = ` ``nn2`` (indices mod :math:`L`), and a random
    perfect matching of long-range partners (ring distance :math:`> 2`) with weight
    ``long_sign * long_range``. With ``long_sign = +1`` every row has the same sum and all entries are
    :math:`\geq 0`, so :math:`J` is a multiple of a row-stochastic matrix (representable by one
    softmax head); ``long_sign = -1`` gives signed couplings (not representable).

    ``L`` must be even (a perfect matching) and at least 8.
    """
    C.positive_int(L, "L")
    if L % 2 or L < 8:
        raise ValueError(f"L must be even and >= 8 for a ring with a perfect long-range matching, got {L}")
    if not isinstance(generator, torch.Generator):
        raise TypeError("generator must be a torch.Generator")
    J = torch.zeros(L, L, dtype=dtype)
    idx = torch.arange(L)
    for k, w in ((1, nn1), (2, nn2)):
        J[idx, (idx + k) % L] = w
        J[(idx + k) % L, idx] = w
    # random perfect matching avoiding local links (rejection on whole matchings; fast for L >= 8)
    for _ in range(10_000):
        perm = torch.randperm(L, generator=generator)
        a, b = perm[0::2], perm[1::2]
        d = (a - b).abs()
        if bool((torch.minimum(d, L - d) > 2).all()):
            break
    else:  # pragma: no cover - practically unreachable
        raise RuntimeError("could not draw a long-range matching")
    J[a, b] = long_sign * long_range
    J[b, a] = long_sign * long_range
    return J


def chain_couplings(L: int, *, nn1: float = 1.0, nn2: float = 0.5, long_range: float = 0.75,
                    n_long: int | None = None, long_sign: float = 1.0, generator: torch.Generator,
                    dtype: torch.dtype = torch.float64) -> Tensor:
    r"""Positional couplings of chapter 2's main teacher: an open chain plus random long-range links.

    :math:`J_{i,i\pm1} = ` ``nn1``, :math:`J_{i,i\pm2} = ` ``nn2`` and ``n_long`` (default
    :math:`L/4`) distinct random pairs at distance :math:`|i-j|>2` with weight
    ``long_sign * long_range``. Row sums differ (chain ends, sites with a long link), so with a
    shared :math:`V` one softmax head cannot represent :math:`\beta J` exactly.
    """
    C.positive_int(L, "L")
    if L < 4:
        raise ValueError(f"L must be >= 4, got {L}")
    if not isinstance(generator, torch.Generator):
        raise TypeError("generator must be a torch.Generator")
    n_long = L // 4 if n_long is None else n_long
    if isinstance(n_long, bool) or not isinstance(n_long, int) or n_long < 0:
        raise ValueError(f"n_long must be an int >= 0, got {n_long!r}")
    J = torch.zeros(L, L, dtype=dtype)
    idx = torch.arange(L)
    for k, w in ((1, nn1), (2, nn2)):
        J[idx[:-k], idx[k:]] = w
        J[idx[k:], idx[:-k]] = w
    pairs = torch.triu_indices(L, L, offset=3)
    if n_long > pairs.shape[1]:
        raise ValueError(f"n_long={n_long} exceeds the {pairs.shape[1]} available long-range pairs")
    pick = torch.randperm(pairs.shape[1], generator=generator)[:n_long]
    a, b = pairs[0, pick], pairs[1, pick]
    J[a, b] = long_sign * long_range
    J[b, a] = long_sign * long_range
    return J


def random_colour_couplings(C_: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float64) -> Tensor:
    r"""Random symmetric colour couplings :math:`U = (G + G^\top)/\sqrt2`, :math:`G_{ab}\sim\mathcal N(0,1)`."""
    from .replica import goe  # the same symmetric Gaussian ensemble

    C.positive_int(C_, "C")
    return goe(C_, generator=generator, dtype=dtype)


def one_hot(s: Tensor, C_: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """One-hot encoding ``(N, L, C)`` of colour sequences ``s`` ``(N, L)``."""
    C.positive_int(C_, "C")
    s = _states(s, "s", C_)
    return F.one_hot(s, C_).to(dtype)


def conditional_logits(model: PottsModel, s: Tensor) -> Tensor:
    r"""Logits of the conditionals, :math:`\beta\sum_{j\neq i}J_{ij}U_{a s_j} + h_i(a)`, shape ``(N, L, C)``.

    ``s`` is ``(N, L)`` integer colours. ``softmax`` over the last axis gives
    :math:`P(s_i = a\mid s_{\setminus i})` (Rende et al. 2024, eq. (2)).
    """
    s = _states(s, "s", model.C)
    if s.shape[1] != model.L:
        raise ValueError(f"s has {s.shape[1]} sites, the model has L={model.L}")
    X = one_hot(s, model.C, model.J.dtype)
    return model.beta * (model.J @ X) @ model.U + model.fields()


def log_weight(model: PottsModel, s: Tensor) -> Tensor:
    r"""Unnormalised log-probability :math:`\frac\beta2\sum_{i\neq j}J_{ij}U_{s_is_j}+\sum_ih_i(s_i)`, ``(N,)``."""
    s = _states(s, "s", model.C)
    X = one_hot(s, model.C, model.J.dtype)
    pair = 0.5 * model.beta * ((model.J @ X) @ model.U * X).sum(dim=(1, 2))
    return pair + (model.fields() * X).sum(dim=(1, 2))


def coupling_logits(W: Tensor, s: Tensor, h: Tensor | None = None) -> Tensor:
    r"""Conditional logits of a general Potts model, :math:`z_i(a) = \sum_{j\neq i} W_{ij}(a, s_j) + h_i(a)`.

    ``W`` ``(L, C, L, C)`` are arbitrary couplings (no symmetry assumed; the blocks :math:`j = i`
    are ignored), ``s`` ``(N, L)`` integer colours, ``h`` optional fields ``(L, C)``. Computed by
    gathering the entries :math:`W_{ij}(\cdot, s_j)` (no matrix product), as an independent
    reference for the factored layer, whose couplings are :math:`W_{ij}(a,b) = A_{ij}V_{ab}`.
    Returns ``(N, L, C)``.
    """
    W = C.float_tensor(W, "W", min_dim=4)
    if W.dim() != 4 or W.shape[0] != W.shape[2] or W.shape[1] != W.shape[3]:
        raise ValueError(f"W must have shape (L, C, L, C), got {tuple(W.shape)}")
    L, C_ = W.shape[0], W.shape[1]
    s = _states(s, "s", C_)
    if s.shape[1] != L:
        raise ValueError(f"s has {s.shape[1]} sites, W has L={L}")
    j = torch.arange(L, device=s.device)
    # Wg[n, i, a, j] = W[i, a, j, s[n, j]]
    Wg = W.permute(2, 3, 0, 1)[j[None, :], s]  # (N, L_j, L_i, C_a)
    off = (~torch.eye(L, dtype=torch.bool, device=s.device)).to(W.dtype)  # [j, i]
    z = (Wg * off[None, :, :, None]).sum(dim=1)  # (N, L_i, C_a)
    if h is not None:
        h = C.float_tensor(h, "h", min_dim=2)
        if tuple(h.shape) != (L, C_):
            raise ValueError(f"h must have shape {(L, C_)}, got {tuple(h.shape)}")
        z = z + h
    return z


def enumerate_states(L: int, C_: int) -> Tensor:
    """All :math:`C^L` sequences, ``(C**L, L)`` int64, in lexicographic order (refuses more than 2e6)."""
    C.positive_int(L, "L")
    C.positive_int(C_, "C")
    if C_**L > 2_000_000:
        raise ValueError(f"C**L = {C_**L} states is too many to enumerate (limit 2e6)")
    return torch.tensor(list(itertools.product(range(C_), repeat=L)), dtype=torch.long).reshape(-1, L)


def exact_log_probs(model: PottsModel) -> tuple[Tensor, Tensor]:
    """All states ``(C**L, L)`` and their exact log-probabilities ``(C**L,)`` by enumeration."""
    states = enumerate_states(model.L, model.C)
    lw = log_weight(model, states)
    return states, lw - torch.logsumexp(lw, dim=0)


def exact_marginals(model: PottsModel) -> tuple[Tensor, Tensor]:
    r"""Exact one-site :math:`P_i(a)` ``(L, C)`` and two-site :math:`P_{ij}(a,b)` ``(L, L, C, C)`` marginals."""
    states, lp = exact_log_probs(model)
    p = lp.exp()
    X = one_hot(states, model.C, lp.dtype)
    p1 = torch.einsum("n,nia->ia", p, X)
    p2 = torch.einsum("n,nia,njb->ijab", p, X, X)
    return p1, p2


def empirical_marginals(s: Tensor, C_: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Sample one-site ``(L, C)`` and two-site ``(L, L, C, C)`` frequencies of sequences ``s`` ``(N, L)``."""
    X = one_hot(s, C_, dtype)
    n = X.shape[0]
    if n == 0:
        raise ValueError("s must contain at least one sequence")
    p1 = X.mean(0)
    Xf = X.reshape(n, -1)
    p2 = (Xf.T @ Xf / n).reshape(X.shape[1], C_, X.shape[1], C_).permute(0, 2, 1, 3)
    return p1, p2


def marginal_z(p_hat: Tensor, p_ref: Tensor, n: int, n_ref: int | None = None, *, floor: float = 1e-12) -> Tensor:
    r"""Standardised differences :math:`z = (\hat p - p)/\sqrt{\bar p(1-\bar p)(1/n + 1/n_\text{ref})}`.

    ``n`` is the number of independent samples behind ``p_hat``; ``n_ref`` those behind ``p_ref``
    (``None``: ``p_ref`` is exact). Under the null hypothesis each entry is approximately
    :math:`\mathcal N(0,1)`. Used for the sampler checks of chapter 2.
    """
    p_hat = C.float_tensor(p_hat, "p_hat")
    p_ref = C.float_tensor(p_ref, "p_ref")
    C.positive_int(n, "n")
    if p_hat.shape != p_ref.shape:
        raise ValueError(f"p_hat {tuple(p_hat.shape)} and p_ref {tuple(p_ref.shape)} must have the same shape")
    inv = 1.0 / n + (0.0 if n_ref is None else 1.0 / C.positive_int(n_ref, "n_ref"))
    pbar = p_ref if n_ref is None else 0.5 * (p_hat + p_ref)
    var = (pbar * (1 - pbar)).clamp_min(floor) * inv
    return (p_hat - p_ref) / var.sqrt()


# --------------------------------------------------------------------------------------------
# The sampler
# --------------------------------------------------------------------------------------------


def greedy_colouring(J: Tensor) -> list[Tensor]:
    r"""Partition the sites into independent sets of the interaction graph :math:`\{J_{ij}\neq0\}`.

    Sites in one set do not interact, so their conditionals are independent given the other sites
    and a heat-bath update of the whole set at once is exact. Greedy (largest degree first).
    Returns a list of int64 index tensors.
    """
    J = C.float_tensor(J, "J", min_dim=2)
    L = J.shape[0]
    adj = (J != 0).cpu()
    adj.fill_diagonal_(False)
    order = sorted(range(L), key=lambda i: -int(adj[i].sum()))
    colour = [-1] * L
    for i in order:
        used = {colour[j] for j in torch.nonzero(adj[i]).flatten().tolist()}
        c = 0
        while c in used:
            c += 1
        colour[i] = c
    n_col = max(colour) + 1
    return [torch.tensor([i for i in range(L) if colour[i] == c], dtype=torch.long) for c in range(n_col)]


def heat_bath(
    model: PottsModel,
    n_chains: int,
    n_sweeps: int,
    *,
    generator: torch.Generator,
    snapshots: Sequence[int] | None = None,
    init: Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    r"""Heat-bath (Gibbs) sampling of ``n_chains`` independent chains of a Potts model, vectorised.

    One sweep visits every site once: the sites are split into independent sets of the interaction
    graph (:func:`greedy_colouring`) and each set is redrawn at once from its exact conditionals
    :math:`P(s_i=a\mid s_{\setminus i}) = \mathrm{softmax}_a(\beta\sum_j J_{ij}U_{as_j} + h_i(a))`,
    for all chains in parallel (inverse-CDF draws from uniforms of ``generator``). Chains start from
    uniformly random sequences unless ``init`` ``(n_chains, L)`` is given.

    Parameters
    ----------
    model
        The :class:`PottsModel` to sample.
    n_chains, n_sweeps
        Number of independent chains and of sweeps.
    generator
        Source of all randomness; its device is the device of the computation.
    snapshots
        Sweep counts (``1..n_sweeps``) at which to record the states; default ``[n_sweeps]``.
    dtype
        Floating dtype of the local fields (``float32`` is enough: only the draws depend on it).

    Returns
    -------
    ``(len(snapshots), n_chains, L)`` int64 states (on the generator's device).
    """
    C.positive_int(n_chains, "n_chains")
    C.positive_int(n_sweeps, "n_sweeps")
    if not isinstance(generator, torch.Generator):
        raise TypeError("generator must be a torch.Generator")
    snaps = [n_sweeps] if snapshots is None else [int(t) for t in snapshots]
    if not snaps or any(t < 1 or t > n_sweeps for t in snaps):
        raise ValueError(f"snapshots must be sweep counts in 1..{n_sweeps}, got {snapshots!r}")
    dev = generator.device
    L, Cc = model.L, model.C
    bJ = (model.beta * model.J).to(dev, dtype)
    U = model.U.to(dev, dtype)
    h = model.fields().to(dev, dtype)
    if init is None:
        s = torch.randint(Cc, (n_chains, L), generator=generator, device=dev)
    else:
        s = _states(init, "init", Cc).to(dev).clone()
        if tuple(s.shape) != (n_chains, L):
            raise ValueError(f"init must have shape {(n_chains, L)}, got {tuple(s.shape)}")
    X = F.one_hot(s.T, Cc).to(dtype).contiguous()  # site-major layout (L, N, C): one GEMM per set
    classes = [c.to(dev) for c in greedy_colouring(model.J)]
    eye = torch.eye(Cc, dtype=dtype, device=dev)
    rec: dict[int, Tensor] = {}
    want = set(snaps)
    for t in range(1, n_sweeps + 1):
        for idx in classes:
            k = idx.numel()
            logits = (bJ[idx] @ X.view(L, -1)).view(k, n_chains, Cc) @ U + h[idx].unsqueeze(1)  # (k, N, C)
            cdf = torch.softmax(logits, dim=-1).cumsum(dim=-1)
            u = torch.rand(k, n_chains, 1, generator=generator, device=dev, dtype=dtype)
            new = (u * cdf[..., -1:] > cdf).sum(dim=-1).clamp_max(Cc - 1)  # (k, N)
            s[:, idx] = new.T
            X[idx] = eye[new]
        if t in want:
            rec[t] = s.clone()
    return torch.stack([rec[t] for t in snaps])


# --------------------------------------------------------------------------------------------
# Losses and statistics
# --------------------------------------------------------------------------------------------


def pseudo_likelihood_loss(logits: Tensor, s: Tensor) -> Tensor:
    r"""Negative log pseudo-likelihood per site, :math:`-\frac{1}{NL}\sum_{n,i}\log\mathrm{softmax}(z_i^n)_{s_i^n}`.

    ``logits`` ``(N, L, C)`` are the conditional logits :math:`z_i(a)` computed with site :math:`i`
    hidden (diagonal masked); ``s`` ``(N, L)`` the observed colours. Equal to the masked-language
    model loss with one masked site per sequence, averaged over sites (chapter 2, claim 2.2).
    """
    logits = C.float_tensor(logits, "logits", min_dim=3)
    s = _states(s, "s", logits.shape[-1])
    if s.shape != logits.shape[:2]:
        raise ValueError(f"s {tuple(s.shape)} must match logits {tuple(logits.shape)} in (N, L)")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), s.reshape(-1))


def conditional_entropy(model: PottsModel, s: Tensor) -> Tensor:
    r"""The exact conditional cross-entropy of the data: :math:`-\frac1{NL}\sum_{n,i}\log P(s^n_i\mid s^n_{\setminus i})`.

    The true model's own pseudo-likelihood loss on ``s``: the floor no learner beats in expectation
    (its expectation over the model is the conditional entropy :math:`\frac1L\sum_i H(s_i\mid s_{\setminus i})`).
    """
    return pseudo_likelihood_loss(conditional_logits(model, s), s)


def conditional_entropy_per_sequence(model: PottsModel, s: Tensor) -> Tensor:
    r"""Per-sequence conditional cross-entropy :math:`-\frac1L\sum_i\log P(s^n_i\mid s^n_{\setminus i})`, ``(N,)``.

    Its mean is :func:`conditional_entropy`; its spread over independent sequences gives the
    standard error of that mean (an equilibration statistic in chapter 2, check 2.1b).
    """
    s = _states(s, "s", model.C)
    lp = torch.log_softmax(conditional_logits(model, s), dim=-1)
    return -lp.gather(2, s.unsqueeze(-1)).squeeze(-1).mean(dim=1)


def hamming_fraction(s: Tensor) -> float:
    r"""Mean pairwise Hamming distance / L over all distinct pairs of sequences (exact, from counts)."""
    s = _states(s, "s")
    N, L = s.shape
    if N < 2:
        raise ValueError("need at least two sequences")
    counts = F.one_hot(s, int(s.max()) + 1).sum(0).double()  # (L, C)
    same = ((counts * (counts - 1)).sum() / (N * (N - 1))).item()  # sum_i P(equal at i)
    return 1.0 - same / L


def mask_sites(X: Tensor, sites: Tensor) -> Tensor:
    r"""Masked copies of one-hot sequences: row ``sites[n]`` of ``X[n]`` replaced by the zero vector.

    ``X`` is ``(N, L, C)``, ``sites`` ``(N,)`` int64 (or ``(N, L)`` bool for several masked sites).
    The zero vector plays the [MASK] token: its value vector :math:`Vx` is zero.
    """
    X = C.float_tensor(X, "X", min_dim=3)
    if not isinstance(sites, torch.Tensor):
        raise TypeError("sites must be a torch.Tensor")
    if sites.dtype == torch.bool:
        if sites.shape != X.shape[:2]:
            raise ValueError(f"a boolean sites mask must have shape {tuple(X.shape[:2])}")
        m = sites
    else:
        if sites.shape != X.shape[:1]:
            raise ValueError(f"sites must have shape ({X.shape[0]},), got {tuple(sites.shape)}")
        m = F.one_hot(sites.long(), X.shape[1]).bool()
    return X.masked_fill(m.unsqueeze(-1), 0.0)


def mlm_loss(logits_fn, s: Tensor, mask: Tensor, C_: int, dtype: torch.dtype = torch.float64) -> Tensor:
    r"""Masked-language-model loss: hide the sites in ``mask``, predict them from what is left.

    .. math:: \ell_\text{MLM} = -\frac{1}{|\mathcal M|}\sum_{(n,i)\in\mathcal M}\log \mathrm{softmax}\big(f(\tilde x^n)_i\big)_{s^n_i},

    where :math:`\tilde x^n` is sequence :math:`n` with its masked sites replaced by the [MASK]
    (zero) vector and :math:`f` = ``logits_fn`` maps ``(N, L, C)`` one-hot inputs to ``(N, L, C)``
    logits. ``mask`` is ``(N,)`` int64 (one masked site per sequence) or ``(N, L)`` bool. With one
    masked site per sequence and every site masked once this is exactly the pseudo-likelihood loss
    (chapter 2, claim 2.2); with several masked sites (BERT's 15%) the context shrinks and it is not.
    """
    s = _states(s, "s", C_)
    X = one_hot(s, C_, dtype)
    logits = logits_fn(mask_sites(X, mask))
    m = mask if mask.dtype == torch.bool else F.one_hot(mask.long(), s.shape[1]).bool()
    return F.cross_entropy(logits[m], s[m])


# --------------------------------------------------------------------------------------------
# Learners
# --------------------------------------------------------------------------------------------


def _onehot_input(X: object, L: int, C_: int) -> Tensor:
    X = C.float_tensor(X, "X", min_dim=3, check_finite=False)
    if X.dim() != 3 or tuple(X.shape[1:]) != (L, C_):
        raise ValueError(f"X must have shape (N, {L}, {C_}), got {tuple(X.shape)}")
    return X


class FactoredAttention(nn.Module):
    r"""One layer of factored self-attention with a softmax read-out, the Potts-conditional learner.

    .. math:: z_i(a) = \sum_{h=1}^{H}\sum_{j\neq i} A^h_{ij}\,(V^h x_j)_a + b_i(a),

    with positional weights :math:`A^h` (``(H, L, L)``, diagonal masked; free signed entries with
    ``attention="free"``, or row-wise :math:`\mathrm{softmax}` of free logits with
    ``attention="softmax"``, see :func:`lib.attention.factored_weights`), colour maps
    :math:`V^h` (``(H, C, C)``) and fields :math:`b` (``(L, C)``). The effective couplings
    :math:`W_{ij}(a,b)=\sum_h A^h_{ij}V^h_{ab}` match :math:`\beta J_{ij}U_{ab}` of the
    :class:`PottsModel` (Rende et al. 2024, eq. (3); chapter 2). Input: one-hot ``(N, L, C)``.
    """

    def __init__(self, L: int, C_: int, *, n_heads: int = 1, attention: str = "free", fields: bool = True,
                 init_scale: float = 0.1, window: int | None = None, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        C.positive_int(L, "L")
        C.positive_int(C_, "C")
        C.positive_int(n_heads, "n_heads")
        C.positive(init_scale, "init_scale")
        if attention not in ("free", "softmax"):
            raise ValueError(f"attention must be 'free' or 'softmax', got {attention!r}")
        if window is not None:
            C.positive_int(window, "window")
            if attention != "free":
                raise ValueError("window is supported with attention='free' only")
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        self.L, self.C, self.attention, self.window = L, C_, attention, window
        self.a = nn.Parameter(init_scale * torch.randn(n_heads, L, L, generator=g, dtype=dtype))
        self.V = nn.Parameter(init_scale * torch.randn(n_heads, C_, C_, generator=g, dtype=dtype))
        self.b = nn.Parameter(torch.zeros(L, C_, dtype=dtype), requires_grad=fields)
        idx = torch.arange(L)
        band = (idx[:, None] - idx[None, :]).abs() <= (L if window is None else window)
        self.register_buffer("band", band.to(dtype))

    def weights(self) -> Tensor:
        r"""Attention weights :math:`A^h_{ij}`, ``(H, L, L)``, diagonal zero (and zero outside the
        window :math:`|i-j|\le` ``window`` when one is set: a misspecified, local attention)."""
        A = factored_weights(self.a, normalize="softmax" if self.attention == "softmax" else "none")
        return A if self.window is None else A * self.band

    def forward(self, X: Tensor) -> Tensor:
        """Logits ``(N, L, C)`` from one-hot (or masked one-hot) sequences ``X`` ``(N, L, C)``."""
        X = _onehot_input(X, self.L, self.C)
        N, H = X.shape[0], self.V.shape[0]
        v = X.reshape(-1, self.C) @ self.V.reshape(H * self.C, self.C).T  # values V^h x_j, (N L, H C)
        v = v.reshape(N, self.L, H, self.C).permute(2, 1, 0, 3).reshape(H, self.L, N * self.C)
        # factored attention y_i = sum_j A_ij v_j (lib.attention.factored_attention, without its
        # per-call input validation, which would dominate the cost of an L-BFGS step)
        z = (self.weights() @ v).sum(dim=0)  # sum_h A^h @ v^h, (L, N C)
        return z.reshape(self.L, N, self.C).transpose(0, 1) + self.b

    def penalty(self) -> Tensor:
        """Squared norm of the attention parameters and of V (for l2 regularisation)."""
        a = self.a if self.window is None else self.a * self.band
        return (a**2).sum() + (self.V**2).sum()

    def couplings(self) -> Tensor:
        r"""Effective couplings :math:`W_{ij}(a,b) = \sum_h A^h_{ij}V^h_{ab}`, ``(L, C, L, C)``."""
        return torch.einsum("hij,hab->iajb", self.weights(), self.V).detach()


class PseudoLikelihoodPotts(nn.Module):
    r"""Full (asymmetric) pseudo-likelihood Potts model: :math:`z_i(a) = \sum_{j\neq i}\sum_b W_{ij}(a,b)x_j(b) + b_i(a)`.

    :math:`L^2C^2` coupling parameters ``W`` (``(L, C, L, C)``, diagonal blocks masked) and fields
    ``b`` ``(L, C)``: plmDCA (Ekeberg et al. 2013), the baseline of chapter 2. Input one-hot ``(N, L, C)``.
    """

    def __init__(self, L: int, C_: int, *, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        C.positive_int(L, "L")
        C.positive_int(C_, "C")
        self.L, self.C = L, C_
        self.W = nn.Parameter(torch.zeros(L, C_, L, C_, dtype=dtype))
        self.b = nn.Parameter(torch.zeros(L, C_, dtype=dtype))
        off = ~torch.eye(L, dtype=torch.bool)
        self.register_buffer("offdiag", off[:, None, :, None].expand(L, C_, L, C_).to(dtype).clone())

    def _W(self) -> Tensor:
        return self.W * self.offdiag

    def forward(self, X: Tensor) -> Tensor:
        """Logits ``(N, L, C)`` from one-hot ``X`` ``(N, L, C)``, or from integer states ``(N, L)``.

        Integer input takes a sparse path (a sum of :math:`L` coupling columns per sequence,
        :func:`torch.nn.functional.embedding_bag`), about :math:`C` times cheaper than the dense product.
        """
        W = self._W().reshape(self.L * self.C, self.L * self.C)
        if isinstance(X, torch.Tensor) and not torch.is_floating_point(X):
            s = _states(X, "X", self.C)
            if s.shape[1] != self.L:
                raise ValueError(f"X has {s.shape[1]} sites, the model has L={self.L}")
            cols = s + self.C * torch.arange(self.L, device=s.device)  # feature index j*C + s_j
            z = F.embedding_bag(cols, W.T, mode="sum")
            return z.reshape(s.shape[0], self.L, self.C) + self.b
        X = _onehot_input(X, self.L, self.C)
        n = X.shape[0]
        return (X.reshape(n, -1) @ W.T).reshape(n, self.L, self.C) + self.b

    def penalty(self) -> Tensor:
        """Squared norm of the couplings."""
        return (self._W() ** 2).sum()

    def couplings(self) -> Tensor:
        """The couplings ``(L, C, L, C)`` (diagonal blocks zero)."""
        return self._W().detach()


class _Block(nn.Module):
    def __init__(self, d: int, n_heads: int, d_ff: int, dtype) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d, dtype=dtype)
        self.attn = MultiHeadAttention(d, n_heads, bias=True, dtype=dtype)
        self.ln2 = nn.LayerNorm(d, dtype=dtype)
        self.mlp = nn.Sequential(nn.Linear(d, d_ff, dtype=dtype), nn.GELU(), nn.Linear(d_ff, d, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class VanillaTransformer(nn.Module):
    r"""A standard (pre-LayerNorm) transformer encoder for masked-language modelling of Potts sequences.

    Input tokens ``(N, L)`` in ``0..C`` where ``C`` is the [MASK] token; the embedding of a token
    is :math:`E_{s_i} + P_i` (token and position *mixed*, unlike :class:`FactoredAttention`), then
    ``n_layers`` blocks of softmax :class:`lib.attention.MultiHeadAttention` and an MLP with
    residual connections, and a linear read-out to ``C`` logits per site ``(N, L, C)``.
    The initial weights are drawn from a seed taken from ``generator`` (torch's global generator
    is restored afterwards); without ``generator`` they come from torch's global generator.
    Chapter 2, claim 2.5.
    """

    def __init__(self, L: int, C_: int, *, d_model: int = 32, n_layers: int = 1, n_heads: int = 2,
                 d_ff: int | None = None, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        for v, name in ((L, "L"), (C_, "C"), (d_model, "d_model"), (n_layers, "n_layers"), (n_heads, "n_heads")):
            C.positive_int(v, name)
        self.L, self.C = L, C_
        self.mask_token = C_
        if generator is not None:
            state = torch.random.get_rng_state()
            torch.manual_seed(int(torch.randint(2**31 - 1, (1,), generator=generator)))
        self.tok = nn.Embedding(C_ + 1, d_model, dtype=dtype)
        self.pos = nn.Parameter(0.1 * torch.randn(L, d_model, dtype=dtype))
        self.blocks = nn.ModuleList(_Block(d_model, n_heads, d_ff or 4 * d_model, dtype) for _ in range(n_layers))
        self.ln = nn.LayerNorm(d_model, dtype=dtype)
        self.out = nn.Linear(d_model, C_, dtype=dtype)
        if generator is not None:
            torch.random.set_rng_state(state)

    def forward(self, tokens: Tensor, sites: Tensor | None = None) -> Tensor:
        """Logits ``(N, L, C)`` of every site of ``tokens`` ``(N, L)``, or ``(N, C)`` at ``sites`` ``(N,)``.

        With ``sites`` the last block computes its query, attention and MLP at that one position
        only (its keys and values still come from every position): the same numbers as
        ``forward(tokens)[arange(N), sites]``, for a fraction of the cost of the last layer.
        """
        tokens = _states(tokens, "tokens", self.C + 1)
        x = self.tok(tokens) + self.pos
        if sites is None:
            for blk in self.blocks:
                x = blk(x)
            return self.out(self.ln(x))
        if not isinstance(sites, torch.Tensor) or tuple(sites.shape) != (tokens.shape[0],):
            raise ValueError(f"sites must be an int64 tensor of shape ({tokens.shape[0]},)")
        for blk in self.blocks[:-1]:
            x = blk(x)
        last = self.blocks[-1]
        ar = torch.arange(tokens.shape[0], device=tokens.device)
        h = last.ln1(x)
        xi = x[ar, sites].unsqueeze(1)  # (N, 1, d): the residual stream at the masked site
        xi = xi + last.attn(h[ar, sites].unsqueeze(1), h)
        xi = xi + last.mlp(last.ln2(xi))
        return self.out(self.ln(xi)).squeeze(1)


def _nll(logits: Tensor, target: Tensor) -> Tensor:
    # mean cross-entropy; about twice as fast as F.cross_entropy for C ~ 10 classes on CPU
    z = logits.reshape(-1, logits.shape[-1])
    m = z.detach().max(dim=-1, keepdim=True).values
    return ((z - m).exp().sum(-1).log() + m.squeeze(-1) - z.gather(1, target).squeeze(1)).mean()


def fit_lbfgs(model: nn.Module, X: Tensor, s: Tensor, *, l2: float = 0.0, max_iter: int = 300,
              tolerance_grad: float = 1e-7, history_size: int = 20) -> float:
    r"""Full-batch L-BFGS (strong Wolfe) on :math:`\ell_\text{PL}(\theta) + \lambda\,\mathrm{penalty}(\theta)`.

    ``model`` maps one-hot ``X`` ``(N, L, C)`` to logits and has a ``penalty()`` method; ``s``
    ``(N, L)`` are the targets; ``l2`` is :math:`\lambda`. Deterministic. Returns the final
    training pseudo-likelihood loss (without the penalty).
    """
    C.nonneg(l2, "l2")
    C.positive_int(max_iter, "max_iter")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, max_eval=int(1.25 * max_iter),
                            tolerance_grad=tolerance_grad, tolerance_change=1e-12,
                            history_size=history_size, line_search_fn="strong_wolfe")
    target = s.reshape(-1, 1)

    def closure():
        opt.zero_grad()
        loss = _nll(model(X), target)
        if l2 > 0:
            loss = loss + l2 * model.penalty()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(pseudo_likelihood_loss(model(X), s))


def fit_with_validation(make_model, s_train: Tensor, s_val: Tensor, C_: int, *, l2_grid: Sequence[float],
                        max_iter: int = 300, warm_start: bool = True,
                        device: torch.device | str | None = None) -> tuple[nn.Module, float, dict]:
    r"""Fit ``make_model()`` by :func:`fit_lbfgs` for each :math:`\lambda` in ``l2_grid``; keep the best on validation.

    The grid is visited from the largest :math:`\lambda` down, each fit warm-started from the
    previous one (a regularisation path). ``device``: where to fit (default: the device of
    ``s_train``). Returns ``(best model, best lambda, {lambda: val loss})``.
    """
    if not l2_grid:
        raise ValueError("l2_grid must not be empty")
    device = s_train.device if device is None else torch.device(device)
    s_train, s_val = s_train.to(device), s_val.to(device)
    Xtr, Xva = one_hot(s_train, C_), one_hot(s_val, C_)
    model = make_model().to(device)
    best, best_lam, scores = None, None, {}
    for lam in sorted(l2_grid, reverse=True):
        if not warm_start:
            model = make_model().to(device)
        fit_lbfgs(model, Xtr, s_train, l2=lam, max_iter=max_iter)
        with torch.no_grad():
            v = float(pseudo_likelihood_loss(model(Xva), s_val))
        scores[lam] = v
        if best is None or v < scores[best_lam]:
            best_lam = lam
            best = {k: t.detach().clone() for k, t in model.state_dict().items()}
    model.load_state_dict(best)
    return model, best_lam, scores


def masked_logits(model: nn.Module, s: Tensor, sites: Tensor) -> Tensor:
    r"""Logits ``(B, C)`` at one masked site per example: the MLM prediction of :math:`s_{n,i}` from the rest.

    ``s`` ``(B, L)`` are integer sequences and ``sites`` ``(B,)`` the masked site of each. A
    :class:`VanillaTransformer` sees the [MASK] token at the site; a one-hot learner
    (:class:`FactoredAttention`, :class:`PseudoLikelihoodPotts`) sees the zero vector there
    (:func:`mask_sites`). Either way the prediction uses the other sites only, so the mean
    cross-entropy over every (sequence, site) pair is the model's negative log pseudo-likelihood
    per site (chapter 2, claim 2.2).
    """
    if not isinstance(sites, torch.Tensor) or sites.dim() != 1:
        raise ValueError("sites must be a 1-D int64 tensor (one masked site per sequence)")
    ar = torch.arange(s.shape[0], device=s.device)
    if isinstance(model, VanillaTransformer):
        s = _states(s, "s", model.C)
        if sites.shape[0] != s.shape[0]:
            raise ValueError(f"sites has {sites.shape[0]} entries for {s.shape[0]} sequences")
        tok = s.clone()
        tok[ar, sites] = model.mask_token
        return model(tok, sites)
    C_ = getattr(model, "C", None)
    if not isinstance(C_, int):
        raise TypeError("model must be a VanillaTransformer or a one-hot learner with attribute C")
    dtype = next(model.parameters()).dtype
    X = mask_sites(one_hot(s, C_, dtype), sites)
    return model(X)[ar, sites]


def masked_site_loss(model: nn.Module, s: Tensor, *, batch_size: int = 4096) -> float:
    r"""Test MLM loss: every site of every sequence masked once, mean cross-entropy at the masked site.

    Builds the :math:`NL` masked copies of ``s`` ``(N, L)`` in batches of ``batch_size`` and
    averages :func:`masked_logits`' cross-entropy: the model's negative log pseudo-likelihood per
    site. Works for :class:`VanillaTransformer`, :class:`FactoredAttention` and
    :class:`PseudoLikelihoodPotts`.
    """
    C.positive_int(batch_size, "batch_size")
    s = _states(s, "s")
    N, L = s.shape
    pairs_n = torch.arange(N, device=s.device).repeat_interleave(L)
    pairs_i = torch.arange(L, device=s.device).repeat(N)
    total = 0.0
    with torch.no_grad():
        for k in range(0, N * L, batch_size):
            n, i = pairs_n[k:k + batch_size], pairs_i[k:k + batch_size]
            logits = masked_logits(model, s[n], i)
            total += float(F.cross_entropy(logits.double(), s[n, i], reduction="sum"))
    return total / (N * L)


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train_mlm`.

    ``val_loss``: the best validation loss (restored into the model); ``best_step``: the step it
    was reached at; ``steps``: steps taken; ``converged``: ``True`` when the run ended on a
    validation plateau at its final learning rate (after all ``lr_drops``) before ``max_steps``;
    ``history``: ``(step, validation loss)`` at every evaluation; ``drops``: learning-rate drops
    taken; ``lr``: the peak learning rate.
    """

    val_loss: float
    best_step: int
    steps: int
    converged: bool
    history: tuple[tuple[int, float], ...]
    drops: int = 0
    lr: float = 0.0


def train_mlm(model: nn.Module, s_train: Tensor, s_val: Tensor, *, generator: torch.Generator,
              lr: float = 3e-3, batch_size: int = 256, max_steps: int = 3000, eval_every: int = 50,
              patience: int = 5, min_delta: float = 1e-4, weight_decay: float = 0.0,
              warmup: int = 0, lr_drops: int = 0, drop_factor: float = 0.1,
              desc: str | None = None) -> TrainResult:
    r"""Train any MLM learner by one protocol: AdamW on random (sequence, site) pairs, drop on plateau.

    Each step draws ``batch_size`` pairs :math:`(n, i)` uniformly from the :math:`ML` pairs of
    ``s_train`` ``(M, L)``, masks site :math:`i` of sequence :math:`n` and minimises the mean
    cross-entropy of :func:`masked_logits` (the one-masked-site MLM loss, i.e. pseudo-likelihood)
    with AdamW. The learning rate rises linearly from ``lr/warmup`` to ``lr`` over the first
    ``warmup`` steps. Every ``eval_every`` steps the full validation loss
    :func:`masked_site_loss` on ``s_val`` is computed. A *plateau* is ``patience`` evaluations
    without an improvement of ``min_delta``: on a plateau the best parameters are restored and
    the learning rate is multiplied by ``drop_factor``, up to ``lr_drops`` times; a plateau at the
    last learning rate ends the run (``converged=True``: no improvement of ``min_delta`` over
    ``patience`` evaluations at the smallest learning rate). The run also ends after ``max_steps``
    (``converged=False``). The best parameters are restored at the end. Deterministic given
    ``generator`` (which draws the pairs; its device is used).

    With ``lr_drops=0`` and ``warmup=0`` this is constant-rate AdamW with early stopping.
    Chapter 2 trains the factored layer and vanilla transformers of every depth with it (claim 2.5).
    ``desc`` labels a progress bar (``None``: no bar).
    """
    C.positive(lr, "lr")
    for v, name in ((batch_size, "batch_size"), (max_steps, "max_steps"), (eval_every, "eval_every"),
                    (patience, "patience")):
        C.positive_int(v, name)
    C.nonneg(min_delta, "min_delta")
    C.nonneg(weight_decay, "weight_decay")
    for v, name in ((warmup, "warmup"), (lr_drops, "lr_drops")):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    if not (0.0 < float(drop_factor) < 1.0):
        raise ValueError(f"drop_factor must lie in (0, 1), got {drop_factor!r}")
    if not isinstance(generator, torch.Generator):
        raise TypeError("generator must be a torch.Generator")
    s_train = _states(s_train, "s_train")
    s_val = _states(s_val, "s_val")
    if s_train.shape[1] != s_val.shape[1]:
        raise ValueError(f"s_train and s_val have different lengths L ({s_train.shape[1]}, {s_val.shape[1]})")
    M, L = s_train.shape
    dev = generator.device
    s_train, s_val = s_train.to(dev), s_val.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    best = masked_site_loss(model, s_val)
    best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
    best_step, bad, history = 0, 0, [(0, best)]
    bar = None
    if desc is not None:
        from repro.progress import progress

        bar = progress(range(max_steps), desc=desc)
        it = iter(bar)
    step, drops, rate = 0, 0, float(lr)
    converged = False
    while step < max_steps:
        step += 1
        if bar is not None:
            next(it, None)
        for grp in opt.param_groups:
            grp["lr"] = rate * min(1.0, step / warmup) if warmup else rate
        n = torch.randint(M, (batch_size,), generator=generator, device=dev)
        i = torch.randint(L, (batch_size,), generator=generator, device=dev)
        loss = F.cross_entropy(masked_logits(model, s_train[n], i), s_train[n, i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == max_steps:
            v = masked_site_loss(model, s_val)
            history.append((step, v))
            if v < best - min_delta:
                best, best_step, bad = v, step, 0
                best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
            else:
                bad += 1
                if bad >= patience:
                    if drops >= lr_drops:
                        converged = True
                        break
                    drops, bad, rate = drops + 1, 0, rate * float(drop_factor)
                    model.load_state_dict(best_state)
    if bar is not None:
        bar.close()
    model.load_state_dict(best_state)
    return TrainResult(float(best), best_step, step, converged, tuple(history), drops, float(lr))


def train_mlm_select_lr(make_model, s_train: Tensor, s_val: Tensor, *, lrs: Sequence[float],
                        seed: int, device: torch.device | str | None = None,
                        **protocol) -> tuple[nn.Module, TrainResult, dict[float, float]]:
    r"""Train ``make_model()`` by :func:`train_mlm` at each peak learning rate of ``lrs``; keep the best on validation.

    Every run starts from the same initialisation (a fresh ``make_model()``) and draws its
    batches from ``torch.Generator(device).manual_seed(seed)``; ``protocol`` goes to
    :func:`train_mlm`. Returns ``(best model, its TrainResult, {lr: best validation loss})``.
    The test set plays no part in the choice.
    """
    if not lrs:
        raise ValueError("lrs must not be empty")
    dev = torch.device("cpu") if device is None else torch.device(device)
    best, scores = None, {}
    for lr in lrs:
        model = make_model().to(dev)
        res = train_mlm(model, s_train, s_val, generator=torch.Generator(device=dev).manual_seed(seed),
                        lr=lr, **protocol)
        scores[float(lr)] = res.val_loss
        if best is None or res.val_loss < best[1].val_loss:
            best = (model, res)
    assert best is not None
    return best[0], best[1], scores


def train_vanilla(model: VanillaTransformer, s_train: Tensor, *, steps: int, batch_size: int = 256,
                  lr: float = 3e-3, generator: torch.Generator, weight_decay: float = 0.0) -> list[float]:
    r"""Train a :class:`VanillaTransformer` by MLM with Adam (cosine learning-rate decay) for ``steps`` steps.

    Each step draws ``batch_size`` random (sequence, site) pairs from ``s_train`` ``(M, L)``, puts
    [MASK] at the site and minimises the cross-entropy there. Returns the training losses.
    """
    C.positive_int(steps, "steps")
    C.positive_int(batch_size, "batch_size")
    C.positive(lr, "lr")
    s_train = _states(s_train, "s_train", model.C)
    M, L = s_train.shape
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    losses = []
    dev = s_train.device
    ar = torch.arange(batch_size, device=dev)
    for _ in range(steps):
        n = torch.randint(M, (batch_size,), generator=generator, device=dev)
        i = torch.randint(L, (batch_size,), generator=generator, device=dev)
        tok = s_train[n].clone()
        tok[ar, i] = model.mask_token
        loss = F.cross_entropy(model(tok)[ar, i], s_train[n, i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses


# --------------------------------------------------------------------------------------------
# Gauge fixing and comparison of couplings
# --------------------------------------------------------------------------------------------


def zero_sum_gauge(W: Tensor) -> Tensor:
    r"""Zero-sum gauge of couplings over colours: :math:`W_{ij}(a,b) - \bar W_{ij}(\cdot,b) - \bar W_{ij}(a,\cdot) + \bar W_{ij}(\cdot,\cdot)`.

    ``W`` is ``(L, C, L, C)``. Shifts :math:`W_{ij}(a,b)\to W_{ij}(a,b)+f_{ij}(a)+g_{ij}(b)` change no
    conditional beyond the fields (or cancel in the softmax), so only the gauged couplings are
    identifiable.
    """
    W = C.float_tensor(W, "W", min_dim=4)
    if W.dim() != 4 or W.shape[0] != W.shape[2] or W.shape[1] != W.shape[3]:
        raise ValueError(f"W must have shape (L, C, L, C), got {tuple(W.shape)}")
    return W - W.mean(1, keepdim=True) - W.mean(3, keepdim=True) + W.mean((1, 3), keepdim=True)


def symmetrize_couplings(W: Tensor) -> Tensor:
    r""":math:`\tfrac12\big(W_{ij}(a,b) + W_{ji}(b,a)\big)`: the two estimates of one symmetric coupling averaged."""
    W = C.float_tensor(W, "W", min_dim=4)
    if W.dim() != 4 or W.shape[0] != W.shape[2] or W.shape[1] != W.shape[3]:
        raise ValueError(f"W must have shape (L, C, L, C), got {tuple(W.shape)}")
    return 0.5 * (W + W.permute(2, 3, 0, 1))


def coupling_correlation(W_est: Tensor, W_true: Tensor) -> float:
    r"""Pearson correlation of zero-sum-gauged, symmetrised couplings over pairs :math:`i<j` and all colours.

    Both ``(L, C, L, C)``. Invariant under the scale freedom :math:`A\to cA`, :math:`V\to V/c` (c>0).
    """
    a = symmetrize_couplings(zero_sum_gauge(W_est))
    b = symmetrize_couplings(zero_sum_gauge(W_true))
    if a.shape != b.shape:
        raise ValueError(f"W_est {tuple(a.shape)} and W_true {tuple(b.shape)} must have the same shape")
    L = a.shape[0]
    iu = torch.triu_indices(L, L, offset=1)
    x = a[iu[0], :, iu[1], :].reshape(-1).double()
    y = b[iu[0], :, iu[1], :].reshape(-1).double()
    x, y = x - x.mean(), y - y.mean()
    return float((x @ y) / (x.norm() * y.norm()))


def contact_scores(W: Tensor) -> Tensor:
    r"""DCA contact scores: APC-corrected Frobenius norms of the gauged couplings, ``(L, L)``.

    :math:`F_{ij} = \big(\sum_{a,b}\tilde W_{ij}(a,b)^2\big)^{1/2}` of the zero-sum-gauged,
    symmetrised couplings :math:`\tilde W` (:func:`zero_sum_gauge`, :func:`symmetrize_couplings`),
    then the average product correction
    :math:`F^\mathrm{APC}_{ij} = F_{ij} - \bar F_{i\cdot}\bar F_{\cdot j}/\bar F_{\cdot\cdot}`, means
    over :math:`j\neq i` (Ekeberg et al. 2013; Dunn et al. 2008). Symmetric, zero diagonal.
    ``W`` is ``(L, C, L, C)``.
    """
    Wt = symmetrize_couplings(zero_sum_gauge(W))
    L = Wt.shape[0]
    off = ~torch.eye(L, dtype=torch.bool, device=Wt.device)
    F_ = (Wt**2).sum(dim=(1, 3)).sqrt() * off
    row = F_.sum(1) / (L - 1)
    total = F_.sum() / (L * (L - 1))
    apc = F_ - row[:, None] * row[None, :] / total
    return apc * off


def contact_precision(scores: Tensor, J: Tensor, k: int | None = None) -> float:
    r"""Fraction of the ``k`` top-scoring pairs :math:`i<j` that are contacts (:math:`J_{ij}\neq0`).

    ``k`` defaults to the number of contacts, so a perfect ranking scores 1. Ties are broken by
    pair order (``torch.topk``).
    """
    scores = C.float_tensor(scores, "scores", min_dim=2)
    J = C.float_tensor(J, "J", min_dim=2)
    if scores.shape != J.shape or scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise ValueError(f"scores {tuple(scores.shape)} and J {tuple(J.shape)} must be the same (L, L)")
    L = J.shape[0]
    iu = torch.triu_indices(L, L, offset=1)
    contact = (J[iu[0], iu[1]] != 0).cpu()
    k = int(contact.sum()) if k is None else k
    C.positive_int(k, "k")
    top = torch.topk(scores[iu[0], iu[1]].cpu(), k).indices
    return float(contact[top].double().mean())
