"""lib.norms against torch.nn.functional.layer_norm and closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from lib.norms import layer_norm, project_to_sphere

D64 = torch.float64


def test_layer_norm_matches_torch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, 6, dtype=D64, generator=g)
    w, b = torch.randn(6, dtype=D64, generator=g), torch.randn(6, dtype=D64, generator=g)
    assert torch.allclose(layer_norm(x), torch.nn.functional.layer_norm(x, (6,)), atol=1e-13)
    assert torch.allclose(layer_norm(x, weight=w, bias=b, eps=1e-3),
                          torch.nn.functional.layer_norm(x, (6,), w, b, eps=1e-3), atol=1e-13)


def test_layer_norm_lands_on_sphere_orthogonal_to_ones():
    x = 100 * torch.randn(50, 8, dtype=D64)
    y = layer_norm(x, eps=1e-12)
    assert torch.allclose(y.norm(dim=-1), torch.full((50,), math.sqrt(8), dtype=D64), atol=1e-9)
    assert torch.allclose(y.sum(-1), torch.zeros(50, dtype=D64), atol=1e-10)


def test_project_to_sphere():
    x = torch.randn(10, 3, dtype=D64)
    y = project_to_sphere(x, radius=2.0)
    assert torch.allclose(y.norm(dim=-1), torch.full((10,), 2.0, dtype=D64), atol=1e-14)
    assert torch.allclose(torch.nn.functional.cosine_similarity(x, y), torch.ones(10, dtype=D64), atol=1e-14)


def test_bad_input():
    with pytest.raises(ValueError, match="zero vector"):
        project_to_sphere(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="radius"):
        project_to_sphere(torch.ones(2, 3), radius=0)
    with pytest.raises(ValueError, match="weight must have shape"):
        layer_norm(torch.ones(2, 3), weight=torch.ones(4))
    with pytest.raises(ValueError, match="non-finite"):
        layer_norm(torch.tensor([[1.0, float("inf")]]))
    with pytest.raises(ValueError, match="eps"):
        layer_norm(torch.ones(2, 3), eps=-1.0)
