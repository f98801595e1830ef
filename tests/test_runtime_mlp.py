"""runtime/mlp.py: the flat MLP weights, their layer views and the forward pass."""
from __future__ import annotations

import pytest
import torch

from nldsl.lower.program import MLPLayout
from nldsl.runtime import mlp

LAYOUTS = [
    pytest.param(MLPLayout((3, 5, 3), "gelu", True), id="3-5-3-gelu-residual"),
    pytest.param(MLPLayout((4, 2), "gelu", False), id="4-2-one-layer"),
    pytest.param(MLPLayout((2, 6, 5, 3), "tanh", False), id="2-6-5-3-tanh"),
    pytest.param(MLPLayout((3, 5, 3), "gelu", True, True), id="3-5-3-layernorm-residual"),
]
PLAIN = LAYOUTS[:3]                # without `layernorm` (its forward pass: the last test)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_flat_weights_are_the_layers_end_to_end(layout):
    weights = mlp.initial(layout, (2, 3), torch.float64)
    flat = mlp.flatten(layout, weights)
    assert flat.shape == (2, 3, layout.size)
    assert layout.size == sum(o * i for o, i in layout.layers) + \
        (layout.widths[-1] if layout.norm else 0)
    for w, view in zip(weights, mlp.layers(layout, flat)):
        assert torch.equal(w, view)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_layers_of_a_flat_tensor_flatten_to_it(layout):
    """A state's own layer views give its flat tensor back, no copy: a flat tensor, an
    expanded one (one memory for a batch: stride 0), and a view of a bigger tensor; separate
    weights, or views that need a gradient, are concatenated (the caller may differentiate
    by the views)."""
    weights = mlp.initial(layout, (3,), torch.float64)
    flat = mlp.flatten(layout, weights).clone()                           # [3, P]
    expanded = mlp.flatten(layout, mlp.initial(layout, (), torch.float64)).expand(2, -1)
    wider = torch.randn(3, layout.size + 4, dtype=torch.float64)[:, 2:-2]
    for base in (flat, expanded, wider):
        got = mlp.flatten(layout, mlp.layers(layout, base))
        assert torch.equal(got, base) and got.data_ptr() == base.data_ptr()
        assert got.stride() == base.stride()
    assert mlp.flatten(layout, mlp.layers(layout, flat)) is flat
    separate = tuple(w.clone() for w in weights)
    copied = mlp.flatten(layout, separate)
    assert torch.equal(copied, flat)
    assert copied.data_ptr() != separate[0].data_ptr() or len(separate) == 1   # one: as it is
    leaf = flat.clone().requires_grad_(True)
    views = mlp.layers(layout, leaf)
    grads = torch.autograd.grad(mlp.flatten(layout, views).square().sum(), views)
    for g, v in zip(grads, views):
        torch.testing.assert_close(g, 2 * v.detach(), atol=0, rtol=0)


@pytest.mark.parametrize("layout", PLAIN)
def test_apply_is_the_forward_pass(layout):
    """M(u) = W_L act(... act(W_1 u)) (+ u), written out per batch entry with torch.mv."""
    torch.manual_seed(0)
    weights = mlp.initial(layout, (4,), torch.float64)
    u = torch.randn(4, layout.widths[0], dtype=torch.float64)
    act = mlp.ACTIVATIONS[layout.activation]
    for b in range(4):
        h = u[b]
        for i, w in enumerate(weights):
            h = torch.mv(w[b], h)
            h = act(h) if i < len(weights) - 1 else h
        expected = h + u[b] if layout.residual else h
        got = mlp.apply(layout, mlp.flatten(layout, weights), u)[b]
        assert torch.allclose(got, expected, rtol=0, atol=1e-14)


def test_apply_broadcasts_one_memory_over_many_inputs():
    """A memory [B, 1, P] (one per sequence) reads inputs [B, T, d] (a chunk of tokens)."""
    layout = MLPLayout((3, 4, 3), "silu", True)
    weights = mlp.initial(layout, (2, 1), torch.float64)
    u = torch.randn(2, 5, 3, dtype=torch.float64)
    many = mlp.apply(layout, mlp.flatten(layout, weights), u)              # [2, 5, 3]
    one = mlp.apply(layout, mlp.flatten(layout, [w[:, 0] for w in weights]), u[:, 2])
    # batched and single matmuls may sum in other orders: inner products of 4 O(1) terms
    assert torch.allclose(many[:, 2], one, rtol=0, atol=1e-14)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_apply_to_sequence_is_apply_at_every_token(layout):
    """One memory per sequence [B, P] over its tokens [B, T, d_0] (the frozen form's batched
    GEMMs, with `layernorm`'s gamma broadcast over T) is M(u_t) token by token."""
    torch.manual_seed(1)
    weights = mlp.initial(layout, (2,), torch.float64)
    if layout.norm:
        weights = weights[:-1] + (torch.randn_like(weights[-1]),)          # gamma != 0
    flat = mlp.flatten(layout, weights)                                    # [2, P]
    u = torch.randn(2, 5, layout.widths[0], dtype=torch.float64)
    sequence = mlp.apply_to_sequence(layout, flat, u)                      # [2, 5, d_L]
    for t in range(5):
        # the same products in another batching: inner products of <= 6 O(1) terms
        assert torch.allclose(sequence[:, t], mlp.apply(layout, flat, u[:, t]), rtol=0,
                              atol=1e-13)


def test_initial_weights_have_std_one_over_sqrt_fan_in():
    layout = MLPLayout((64, 256, 64), "gelu", True)
    torch.manual_seed(0)
    w1, w2 = mlp.initial(layout, (8,), torch.float64)
    # std of 8 * 256 * 64 = 131072 normal draws: relative standard error sqrt(1/(2n)) ~ 0.002
    assert abs(w1.std().item() * 64 ** 0.5 - 1) < 0.01
    assert abs(w2.std().item() * 256 ** 0.5 - 1) < 0.01


def test_layernorm_is_titans_pytorchs_residual_norm():
    """`layernorm`: M(u) = LN(W_2 gelu(W_1 u)) * (gamma + 1) + u with LN without affine, eps
    1e-5, biased variance, written out by hand; gamma is the last part, 0 at the start."""
    layout = MLPLayout((3, 6, 3), "gelu", True, True)
    g = torch.Generator().manual_seed(3)
    w1, w2 = torch.randn(2, 6, 3, generator=g, dtype=torch.float64), \
        torch.randn(2, 3, 6, generator=g, dtype=torch.float64)
    gamma = torch.randn(2, 3, generator=g, dtype=torch.float64)
    u = torch.randn(2, 3, generator=g, dtype=torch.float64)
    h = torch.einsum("boi,bi->bo", w2, torch.nn.functional.gelu(torch.einsum("boi,bi->bo", w1, u)))
    centred = h - h.mean(-1, keepdim=True)
    expected = centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + 1e-5) * (gamma + 1) + u
    got = mlp.apply(layout, mlp.flatten(layout, (w1, w2, gamma)), u)
    torch.testing.assert_close(got, expected, rtol=1e-14, atol=1e-14)
    assert torch.equal(mlp.initial(layout, (2,), torch.float64)[-1], torch.zeros(2, 3,
                                                                                 dtype=torch.float64))
