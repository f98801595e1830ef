"""A rule chain's transforms at run time (lower/derive.py's `ChainStep`s; docs/language.md,
"Chains"): the update direction u starts as the objective's gradient G and each rule before
the last turns it into

    momentum(lr, beta)   m <- beta m + lr u;            u <- m
    ema(beta)            m <- beta m + (1 - beta) u;    u <- m
    newton_schulz(k)     u <- NS_k(u), per weight matrix

The last rule then applies u in place of G. Newton-Schulz is Muon's iteration, op for op as the
optimizer compiler computes it (optim/kernels.py), on each matrix of the state separately: a
matrix state [B, (H,) m, n] per sequence and head, an `mlp` memory layer by layer (each W_i of
M(u) = W_L act(... W_1 u) orthogonalised on its own, as Muon treats each parameter;
`layernorm`'s gamma as a matrix of one row per sequence and head, NS of which is about
g / ||g||). It is
computed in `precision` or the state's dtype, whichever is wider, so a float64 module stays
float64.
"""
from __future__ import annotations

import torch

from nldsl.lower.program import MLPLayout
from nldsl.optim.kernels import PRECISIONS, newton_schulz_batch
from nldsl.runtime import mlp


def newton_schulz_state(u: torch.Tensor, layout: MLPLayout | None, steps, polynomial="quintic",
                        eps: float = 1e-7, precision: str = "float32") -> torch.Tensor:
    """NS of a state-shaped value: u [..., m, n] (a matrix state) or [..., P] (an MLP, flat)."""
    precision = _wider(precision, u.dtype)
    if layout is None:
        return newton_schulz_batch(u, int(steps), polynomial, eps, precision)
    depth = len(layout.layers)                   # then gamma [..., d_L]: one row [..., 1, d_L]
    ns = lambda w: newton_schulz_batch(w, int(steps), polynomial, eps, precision)
    return mlp.flatten(layout, [ns(w) if i < depth else ns(w.unsqueeze(-2)).squeeze(-2)
                                for i, w in enumerate(mlp.layers(layout, u))])


def _wider(precision: str, dtype: torch.dtype) -> str:
    bits = lambda d: torch.finfo(d).bits
    if dtype.is_floating_point and bits(dtype) > bits(PRECISIONS[precision]):
        return next(name for name, d in PRECISIONS.items() if d == dtype)
    return precision


def transform(step, u, args: dict, buffer, layout: MLPLayout | None, mul):
    """(the new direction, the buffer's new value or None) after `step` with its evaluated
    `args`; `mul(a, b)` multiplies a gate by a state-shaped value (the frame's broadcast)."""
    if step.rule == "newton_schulz":
        return newton_schulz_state(u, layout, args["steps"], args["polynomial"], args["eps"],
                                   args["precision"]), None
    if step.rule == "ema":
        value = mul(args["beta"], buffer) + mul(1 - args["beta"], u)
    else:
        value = mul(args["beta"], buffer) + mul(args["lr"], u)
    return value, value
