"""Task-loss gradients of frozen memories as token factors, summed once per write.

A task level's state W is read, between its writes, only through products u @ W^T (a matrix
memory, or each layer of an MLP memory: the chunked schedule's frozen form). The gradient of the
segment's loss L by such a W is then a sum over the tokens that read it,

    dL/dW[b] = sum_t g[b, t]^T u[b, t]        g = dL/d(u W^T) [B, n, d_out], u [B, n, d_in]

so the task driver (module/task.py) need not form a [B, d_out, d_in] gradient per segment: the
backward pass keeps (u, g) of every product instead, and `fold` sums a whole period's tokens in
one batched GEMM when the level writes. The value is eq. 71's sum of per-token gradients, in
another summation order (rounding only).

The driver asks for this only where it is the whole gradient (`recordable`: the state appears in
the program only as the function of its own level's reads) and only without outer gradients
(the product's weight gradient is left out of autograd, so nothing can differentiate through it).
It names the states to record by their tensors (`recording`); the frozen form's product
(`product`) records a weight it finds there, and computes an ordinary product otherwise, which
autograd then differentiates as before. A recorded state the module did not read through its
frozen form (a call that fell back to the token loop) is no sink `applied`: the driver then
runs the segment again with every state a leaf.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar

import torch

from nldsl.language import ast
from nldsl.language.consteval import calls_in, names_in
from nldsl.lower.program import MLPLayout, Program, TokenLevel
from nldsl.lower.task import FrozenForm
from nldsl.runtime import mlp

#: id of a state tensor being recorded -> its sink: (layer, u, g) per product, filled by backward
_SINKS: ContextVar[dict[int, list] | None] = ContextVar("nldsl_task_sinks", default=None)


def recordable(program: Program, level: TokenLevel, forms: dict) -> tuple[str, ...]:
    """The level's states whose only use in the program is as the function of a read of their
    own level, run by the chunked schedule's frozen form, and whose every weight is a matrix
    (no layernorm gamma): their gradient is the products'."""
    if not isinstance(forms.get(level.name), FrozenForm):
        return ()
    exprs = [program.output, *program.outer_contexts.values()]
    for other in program.levels:
        exprs += [*other.contexts.values(), *(value for value, _ in other.reads.values())]
    named = {node.id for expr in exprs for node in names_in(expr)}
    called_elsewhere = {call.func for other in program.levels if other is not level
                        for call in _calls(other)}
    return tuple(name for name, state in level.states.items()
                 if name not in named and name not in called_elsewhere
                 and (state.mlp is None or not state.mlp.norm))


def _calls(level: TokenLevel) -> list[ast.Call]:
    exprs = [*level.contexts.values(), *(value for value, _ in level.reads.values())]
    return [call for expr in exprs for call in calls_in(expr)]


@contextmanager
def recording(sinks: dict[int, list]):
    """Within: a frozen product of a tensor whose id is in `sinks` records into its list."""
    token = _SINKS.set(sinks)
    try:
        yield
    finally:
        _SINKS.reset(token)


def product(memory: torch.Tensor):
    """The frozen form's `(i, u, W) -> u @ W^T` for this state tensor when it is recorded, else
    None (the plain product)."""
    sinks = _SINKS.get()
    sink = sinks.get(id(memory)) if sinks is not None else None
    if sink is None or not torch.is_grad_enabled():
        return None
    sink.applied = True
    return lambda i, u, weight: _Recorded.apply(u, weight, sink.anchor, sink, i)


class Sink:
    """One recorded state's products of a segment: (layer, u, g) each, filled by backward.
    `anchor`, a leaf the driver differentiates by, puts a product in the graph even when
    neither u nor W needs a gradient (the first layer of the first level)."""

    def __init__(self):
        self.anchor = torch.zeros((), requires_grad=True)
        self.applied = False              # did the frozen form ask for the product?
        self.records: list[tuple[int, torch.Tensor, torch.Tensor]] = []


class _Recorded(torch.autograd.Function):
    """u @ W^T whose backward passes dL/du on and keeps (u, dL/d(u W^T)) instead of dL/dW."""

    @staticmethod
    def forward(ctx, u, weight, anchor, sink, layer):
        ctx.save_for_backward(u, weight)
        ctx.sink, ctx.layer = sink, layer
        return u @ weight.mT                                      # [B, n, d_out]

    @staticmethod
    def backward(ctx, g):
        u, weight = ctx.saved_tensors
        # detached: a record holding u's graph, which holds this node, which holds the sink,
        # would be a cycle through autograd's C++ nodes that Python's collector cannot free
        ctx.sink.records.append((ctx.layer, u.detach(), g.detach()))
        grad_u = g @ weight if ctx.needs_input_grad[0] else None  # [B, n, d_in]
        return grad_u, None, None, None, None


def fold(records: list, layers: int):
    """sum over the records of g^T u, per layer ([B, d_out, d_in] each); None without records
    (the state was not read)."""
    if not records:
        return None
    grads = []
    for i in range(layers):
        u, g = _factors(records, i)
        grads.append(g.mT @ u)                                    # [B, d_out, d_in]
    return grads


def write(layout: MLPLayout | None, theta, records: list, lr: float, beta: float):
    """The written state beta theta - lr sum g^T u (eq. 71's write of gd(lr, decay) over n
    tokens: beta = 1 + n (decay - 1)), straight into one new tensor: a matrix, or the flat
    tensor of an MLP's layers (returned as its layer views, so the next call takes it as it
    is). One fused GEMM per layer (baddbmm), no gradient tensor, no pending sum."""
    flat = mlp.flatten(layout, theta) if layout is not None else theta    # [B, P] or [B, o, i]
    new = torch.empty(flat.shape, dtype=flat.dtype, device=flat.device)
    olds = mlp.layers(layout, flat) if layout is not None else (flat,)
    news = mlp.layers(layout, new) if layout is not None else (new,)
    for i, (old, out) in enumerate(zip(olds, news)):
        if not any(layer == i for layer, _, _ in records):            # not read: no gradient
            torch.mul(old, beta, out=out)
            continue
        u, g = _factors(records, i)                                   # [B, N, d_in], [B, N, d_out]
        torch.baddbmm(old, g.mT, u, beta=beta, alpha=-lr, out=out)   # [B, d_out, d_in]
    return news if layout is not None else new


def _factors(records: list, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A layer's records side by side: u [B, N, d_in], g [B, N, d_out] over all N tokens."""
    return (torch.cat([u for i, u, _ in records if i == layer], dim=-2),
            torch.cat([g for i, _, g in records if i == layer], dim=-2))
