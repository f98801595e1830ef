"""Per-weight arithmetic on MLP memories (docs/language.md, "MLP memories"; nldsl/language/memories.py).

A schedule keeps an MLP state as one flat vector [..., P] (runtime/mlp.py). A per-weight
expression means, layer by layer, the same expression on the weight matrices:

    E(A, B, ...)_i = E(A_i, B_i, ...),     A_i [..., d_i, d_{i-1}] the i-th weight of A

evaluated with the spec's ordinary matrix semantics (`norm` of the rows, `softmax` over the
last dim, `sum(transpose(sum(.)))` a number per matrix), then laid end to end again; with
`layernorm`, gamma [d_L] is the last weight, the expression evaluated on it as on any vector. Values
in it (gates, numbers) are the same for every layer. A forward pass `M(u)` inside it uses the
whole memory.

A channel-wise gate g of width w on an MLP (a rule's lr, decay or beta) scales, in each layer
W_i [d_i, d_{i-1}], the input channels (columns, W_i diag(g)) when d_{i-1} = w, else the output
channels (rows, diag(g) W_i) when d_i = w: for a d -> 4d -> d memory, the memory's input
channels in the first layer and its output channels in the last (validation/memories.py rejects
any other width). With `layernorm` the norm's gamma [d_L] scales the output channels, so it
takes the gate as it is, of width d_L.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from nldsl.language import ast
from nldsl.lower.program import MLPLayout
from nldsl.runtime import mlp
from nldsl.runtime.evaluate import FrameEvaluator
from nldsl.runtime.frame import Frame


def evaluate(layout: MLPLayout, expr: ast.Expr, frame: Frame, lookup: Callable[[str], Any],
             apply: Callable, conv: Callable, memories: set[str]) -> torch.Tensor:
    """The per-weight expression `expr` -> its flat value [..., P]. `lookup` gives every name
    its usual value (a memory in `memories`: its flat weights); `apply(name, u)` a forward
    pass of a whole memory."""
    parts = []
    for i, shape in enumerate(layout.parts):         # the layers, then `layernorm`'s gamma
        def layer(name, i=i):
            value = lookup(name)
            return mlp.layers(layout, value)[i] if name in memories else value  # [.., o, i]
        weight = FrameEvaluator(frame, layer, apply, conv)(expr)
        parts.append(weight.expand(*weight.shape[:-len(shape)], *shape).flatten(-len(shape)))
    return torch.cat(parts, dim=-1)                                     # [.., P]


def channel_gate(layout: MLPLayout, gate, frame: Frame):
    """A rule's gate as a factor of the flat weights: a number (or one per head) stays as it is;
    a vector [..., w] becomes [..., P], each layer scaled by columns or rows (module doc)."""
    if frame.rank(gate) == 0 or gate.shape[-1] == 1:       # width 1 broadcasts as it is
        return gate
    width = gate.shape[-1]
    parts = []
    for d_out, d_in in layout.layers:
        if width == d_in:
            scale = gate.unsqueeze(-2).expand(*gate.shape[:-1], d_out, d_in)   # W diag(g)
        elif width == d_out:
            scale = gate.unsqueeze(-1).expand(*gate.shape[:-1], d_out, d_in)   # diag(g) W
        else:
            raise ValueError(f"a gate of width {width} on an mlp layer [{d_out}, {d_in}]")
        parts.append(scale.flatten(-2))
    if layout.norm:
        if width != layout.widths[-1]:
            raise ValueError(f"a gate of width {width} on a layernorm gamma [{layout.widths[-1]}]")
        parts.append(gate)                                                     # gamma [.., d_L]
    return torch.cat(parts, dim=-1)                                            # [.., P]


def matrix_gate(gate, shape: tuple[int, ...], frame: Frame):
    """A rule's gate on a matrix state [d_v, d_k]: width d_k scales the columns (torch's own
    broadcast), width d_v (when d_v != d_k) the rows."""
    if frame.rank(gate) == 1 and len(shape) == 2 and \
            gate.shape[-1] == shape[0] != shape[1]:
        return gate.unsqueeze(-1)                                              # [.., d_v, 1]
    return gate
