r"""Normalisations: layer norm and projection onto the sphere.

Layer norm without its affine part maps a token :math:`x\in\mathbb R^d` to

.. math:: \mathrm{LN}(x) = \frac{x - \bar x\,\mathbf 1}{\sqrt{\tfrac1d\|x-\bar x\mathbf 1\|^2 + \varepsilon}},

a point on the sphere of radius :math:`\sqrt d` (up to :math:`\varepsilon`) in the hyperplane
orthogonal to :math:`\mathbf 1`. Chapter 1 uses it as the contraction that balances attention's
expansion; chapter 3 uses :func:`project_to_sphere` for tokens on the sphere.
"""

from __future__ import annotations

import torch

from . import _checks as C

Tensor = torch.Tensor

__all__ = ["layer_norm", "project_to_sphere"]


def layer_norm(x: Tensor, *, eps: float = 1e-5, weight: Tensor | None = None, bias: Tensor | None = None) -> Tensor:
    r"""Layer normalisation over the last dimension, :math:`\gamma\odot\mathrm{LN}(x) + b`.

    ``weight`` (:math:`\gamma`) and ``bias`` (:math:`b`) are optional ``(d,)`` tensors.
    Matches :func:`torch.nn.functional.layer_norm` (biased variance).
    """
    x = C.float_tensor(x, "x")
    eps = C.positive(eps, "eps")
    mu = x.mean(-1, keepdim=True)
    xc = x - mu
    y = xc / torch.sqrt((xc * xc).mean(-1, keepdim=True) + eps)
    d = x.shape[-1]
    if weight is not None:
        weight = C.float_tensor(weight, "weight")
        if weight.shape != (d,):
            raise ValueError(f"weight must have shape ({d},), got {tuple(weight.shape)}")
        y = y * weight
    if bias is not None:
        bias = C.float_tensor(bias, "bias")
        if bias.shape != (d,):
            raise ValueError(f"bias must have shape ({d},), got {tuple(bias.shape)}")
        y = y + bias
    return y


def project_to_sphere(x: Tensor, *, radius: float = 1.0) -> Tensor:
    r"""Rescale each token (last dimension) to norm ``radius``: :math:`x \mapsto r\,x/\|x\|`.

    A zero vector has no direction: raises ``ValueError``.
    """
    x = C.float_tensor(x, "x")
    radius = C.positive(radius, "radius")
    nrm = x.norm(dim=-1, keepdim=True)
    if bool((nrm == 0).any()):
        raise ValueError("x contains a zero vector, which has no projection onto the sphere")
    return radius * x / nrm
