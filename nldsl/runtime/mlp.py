"""MLP memories at run time: the forward pass of a flat weight vector, and its layer views.

A schedule keeps an `mlp(...)` state as one vector [..., P] (lower/program.py's `MLPLayout`):
every rule's arithmetic is then elementwise on it, per weight, exactly as on a matrix. Users see
the weights by part (docs/modules.md, "State"): the layers, then `layernorm`'s gamma; `layers`
and `flatten` convert at the module's boundary, once per call.

    M(u) = W_L act(W_{L-1} ... act(W_1 u))                     (+ u with `residual`, eq. 89)
    M(u) = LN(W_L act(... act(W_1 u))) * (gamma + 1)           (`layernorm`; + u with `residual`)

LN is LayerNorm without affine (biased variance, eps 1e-5): titans-pytorch's ResidualNorm
memory (memory_models.py, from TTT), gamma a weight of the memory, 0 at the start.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nldsl.lower.program import MLPLayout

ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu, "relu": torch.relu, "tanh": torch.tanh}
#: `layernorm`'s epsilon: torch's nn.LayerNorm default, as titans-pytorch's memory uses it.
LAYERNORM_EPS = 1e-5


def layers(layout: MLPLayout, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """[..., P] -> one view per part: [..., d_out, d_in] per layer, then gamma [..., d_L]."""
    lead = flat.shape[:-1]            # a slice of the last axis (stride 1) always views
    return tuple(flat[..., a:b].view(lead + shape) for (a, b), shape in
                 zip(zip(layout.offsets, layout.offsets[1:]), layout.parts))


def flatten(layout: MLPLayout, weights) -> torch.Tensor:
    """One tensor per part ([..., d_out, d_in] per layer, then gamma [..., d_L]) -> [..., P].
    Weights that are exactly `layers` of one flat tensor (a state the module returned) give
    that tensor back, not a copy, when none needs a gradient (with one, a caller may
    differentiate by the views themselves)."""
    base = _viewed(layout, weights)
    if base is not None:
        return base
    return torch.cat([w.flatten(-len(shape)) for w, shape in zip(weights, layout.parts)], dim=-1)


def _viewed(layout: MLPLayout, weights) -> torch.Tensor | None:
    """The flat tensor [..., P] whose `layers` the weights are (their common base, or the same
    memory seen as one), or None."""
    first = weights[0]
    if len(weights) != len(layout.parts) or any(
            not isinstance(w, torch.Tensor) or w.requires_grad for w in weights):
        return None
    storage = first.untyped_storage().data_ptr()
    if any(w.untyped_storage().data_ptr() != storage for w in weights):
        return None
    base = first._base
    if base is None or base.shape[:-1] != first.shape[:-2] or base.shape[-1] != layout.size:
        try:                                  # e.g. an expanded state: [B] of stride 0
            base = first.as_strided(first.shape[:-2] + (layout.size,),
                                    first.stride()[:-2] + (1,), first.storage_offset())
        except RuntimeError:                  # past the end of the memory: not one flat tensor
            return None
    lead, strides, start = base.shape[:-1], base.stride()[:-1], base.storage_offset()
    if base.stride()[-1] != 1:
        return None
    for w, shape, offset in zip(weights, layout.parts, layout.offsets):
        inner = (shape[1], 1) if len(shape) == 2 else (1,)      # a part's rows, contiguous
        if w.shape != lead + shape or w.stride() != strides + inner or \
                w.storage_offset() != start + offset:
            return None
    return base


def apply(layout: MLPLayout, flat: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """M(u): flat [..., P] and u [..., d_0] broadcast over their leading dims -> [..., d_L]."""
    h = u
    parts = layers(layout, flat)
    weights = parts[:len(layout.layers)]
    for i, weight in enumerate(weights):
        h = torch.matmul(weight, h.unsqueeze(-1)).squeeze(-1)     # [..., d_{i+1}]
        if i < len(weights) - 1:
            h = ACTIVATIONS[layout.activation](h)
    if layout.norm:
        h = F.layer_norm(h, h.shape[-1:], eps=LAYERNORM_EPS) * (parts[-1] + 1)   # [..., d_L]
    return h + u if layout.residual else h


def apply_to_sequence(layout: MLPLayout, flat: torch.Tensor, u: torch.Tensor,
                      product=None) -> torch.Tensor:
    """M(u) for one memory per sequence applied to all its tokens: flat [B, P], u [B, T, d_0]
    -> [B, T, d_L], each layer one batched GEMM h W^T (`product(i, h, W)` when given: the task
    driver's recording product, module/taskgrad.py)."""
    h = u
    parts = layers(layout, flat)
    weights = parts[:len(layout.layers)]
    for i, weight in enumerate(weights):
        h = h @ weight.mT if product is None else product(i, h, weight)   # [B, T, d_{i+1}]
        if i < len(weights) - 1:
            h = ACTIVATIONS[layout.activation](h)
    if layout.norm:
        gamma = parts[-1].unsqueeze(-2)                                   # [B, 1, d_L]
        h = F.layer_norm(h, h.shape[-1:], eps=LAYERNORM_EPS) * (gamma + 1)  # [B, T, d_L]
    return h + u if layout.residual else h


def precondition(layout: MLPLayout | None, state: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(W k) k^T for the weight W that multiplies the key k (NL eq. 88's S k k^T, read on an
    MLP's first layer, the only one it type-checks on; zero on the others), shaped like the
    state: a matrix [..., o, i] or an MLP's flat [..., P]; k [..., d_0]. Never a d x d product:
    W k first, then one outer product."""
    first = layers(layout, state)[0] if layout is not None else state      # [..., d_1, d_0]
    term = (first @ k.unsqueeze(-1)) * k.unsqueeze(-2)                     # [..., d_1, d_0]
    if layout is None:
        return term
    rest = state.new_zeros(state.shape[:-1] + (layout.size - layout.offsets[1],))
    return torch.cat([term.flatten(-2), rest], dim=-1)                     # [..., P]


def initial(layout: MLPLayout, lead: tuple[int, ...], dtype=None) -> tuple[torch.Tensor, ...]:
    """Fresh weights [*lead, d_out, d_in] per layer, each N(0, 1 / d_in) (docs/language.md,
    "Initial values": std 1 / sqrt(fan_in)), and `layernorm`'s gamma [*lead, d_L] at 0."""
    weights = tuple(torch.randn(lead + (d_out, d_in), dtype=dtype) / math.sqrt(d_in)
                    for d_out, d_in in layout.layers)
    return weights + ((torch.zeros(lead + (layout.widths[-1],), dtype=dtype),) if layout.norm
                      else ())
