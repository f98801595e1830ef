"""The guard of a memory's write: per-unit gradient-norm clipping (`clip = c` on gd, dgd or
momentum; docs/modules.md, "Stability").

Each weight matrix of the state (the matrix itself for a tensor state, every layer W_i of an
`mlp` state, and `layernorm`'s gamma as a matrix of one row) has its gradient clipped to
Frobenius norm at most c, per token, sequence and head:

    G^i_t <- s^i_t G^i_t,    s^i_t = c / max(||G^i_t||_F, c) = min(1, c / ||G^i_t||_F)

before the rule uses it (titans-pytorch's `max_grad_norm` clamps per weight tensor as well,
softly and per chunk). Every write then moves a matrix by at most lr c, so with decays <= 1 the
state after T tokens is bounded by its start plus T max(lr) c (the momentum rule by the same
over 1 - max(beta)): finite whatever lr and the data do. Below the bound s = 1 and the gradient
of s is 0, so an unclipped write is exactly the unguarded rule.

In the deep chunk form the gradient of layer i is an outer product, G^i_t = delta^i_t
a^{i-1,T}_t, whose norm is ||delta^i_t|| ||a^{i-1}_t||: the scale is one number per token and
layer, folded into delta (`clip_factors`), never forming G. In the snapshot chunk form a
token's gradient sums several applications, and its norm comes from the factors' Gram matrices
(`clip_applications`).
"""
from __future__ import annotations

import torch

from nldsl.lower.program import MLPLayout
from nldsl.runtime import mlp


def scale(norm: torch.Tensor, c) -> torch.Tensor:
    """1 / max(norm / c, 1) = min(1, c / norm), elementwise; c a number or a tensor broadcasting
    against norm from the left (its missing trailing dims added). c = inf gives 1 (no clip);
    the gradient reaches norm only where norm > c, and a zero norm gives 1 with gradient 0
    (the norm's own gradient at 0 is 0)."""
    c = torch.as_tensor(c, dtype=norm.dtype, device=norm.device)
    c = c.reshape(c.shape + (1,) * (norm.ndim - c.ndim))
    return 1 / torch.clamp(norm / c, min=1)


def clip_gradient(frame, layout: MLPLayout | None, grad: torch.Tensor, c) -> torch.Tensor:
    """The reference schedule's guard: grad [*units, P] of an mlp state (flat, `layout`) or
    [*units, *shape] of a tensor state, clipped per weight matrix; c one number per unit."""
    if layout is None:
        dims = frame.value_dims(grad)
        norm = torch.linalg.vector_norm(grad, dim=dims)                    # [*units]
        return grad * scale(norm, c).reshape(norm.shape + (1,) * len(dims))
    clipped = []
    for g, shape in zip(mlp.layers(layout, grad), layout.parts):          # [*units, o, i]..
        dims = tuple(range(-len(shape), 0))          # gamma [*units, d_L]: its own vector
        norm = torch.linalg.vector_norm(g, dim=dims)                       # [*units]
        clipped.append(g * scale(norm, c).reshape(norm.shape + (1,) * len(dims)))
    return mlp.flatten(layout, clipped)


def clip_factors(deltas: list, inputs: list, c: torch.Tensor) -> list:
    """The deep chunk form's guard: deltas [B, H, L, d_i] and inputs [B, H, L, d_{i-1}] per
    layer, c [B, H, L] -> the deltas scaled by s^i_t with ||G^i_t||_F = ||delta|| ||a|| (one
    application)."""
    return [d for _, d in clip_applications([list(zip(inputs, deltas))], c)[0]]


def clip_applications(applications: list, c: torch.Tensor, depth: int | None = None) -> list:
    """The snapshot chunk form's guard: a token's gradient of layer i is a sum over the loss's
    applications p of M, G^i_t = sum_p delta_p a_p^T, so
    ||G^i_t||_F^2 = sum_{p,q} (delta_p . delta_q)(a_p . a_q) (Gram matrices of the factors,
    never G; for one application ||delta|| ||a||). applications: per application,
    [(a_{i-1} [..., L, d_{i-1}], delta_i [..., L, d_i]) per layer], then past `depth` layers
    `layernorm`'s gamma's (LN(z_L), delta), whose gradient is elementwise, G_t = sum_p
    delta_p o LN(z_L)_p, its norm that vector's; c [..., L]. Returns them with every delta of
    layer i scaled by s^i_t."""
    clipped = [list(pairs) for pairs in applications]
    for i in range(len(clipped[0]) if clipped else 0):
        if depth is not None and i >= depth:
            g = sum(d * a for a, d in (pairs[i] for pairs in clipped))     # [..., L, d_L]
            norm = torch.linalg.vector_norm(g, dim=-1)
        elif len(clipped) == 1:
            a, d = clipped[0][i]
            norm = torch.linalg.vector_norm(d, dim=-1) * torch.linalg.vector_norm(a, dim=-1)
        else:
            a = torch.stack([pairs[i][0] for pairs in clipped])             # [A, ..., L, d_{i-1}]
            d = torch.stack([pairs[i][1] for pairs in clipped])             # [A, ..., L, d_i]
            squared = (torch.einsum("p...d,q...d->...pq", d, d) *
                       torch.einsum("p...d,q...d->...pq", a, a)).sum((-2, -1))  # [..., L]
            # the floor keeps sqrt's gradient finite at 0, where the scale is 1 anyway
            norm = squared.clamp(min=torch.finfo(squared.dtype).tiny).sqrt()
        s = scale(norm, c).unsqueeze(-1)                                    # [..., L, 1]
        for pairs in clipped:
            pairs[i] = (pairs[i][0], pairs[i][1] * s)
    return clipped

