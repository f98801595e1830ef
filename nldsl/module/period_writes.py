"""The writes of the periodic form (module/periodic_chunk.py) over a span of the call's tokens
inside one chunk, whole periods but for the call's first and last: every gradient at the
chunk's snapshot M_g, one batched forward and backward of the loss for the span, each period's
summed gradient G_n one batched matmul per layer over its tokens, then one rule step per period
with the gates of its last token,

    S_n = beta_n S_{n-1} - lr_n G_n,  M_n = decay_n M_{n-1} + S_n   (momentum)
    M_n = decay_n M_{n-1} - lr_n G_n                                (gradient rule)

Shared by the plain loop (a span per chunk) and the checkpointed regions (a span per region).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from nldsl.lower.periodic_forms import PeriodicForm
from nldsl.lower.program import MLPLayout, TokenLevel
from nldsl.module.deep_chunk import loss_factors
from nldsl.module.period_means import group_by_period


class PeriodCall(NamedTuple):
    """What every span of a call's writes shares: the gates [B, H, T] each (lr, decay, beta),
    the stream's token count at the call's start, and whether the writes keep their graph."""
    values: object
    level: TokenLevel
    form: PeriodicForm
    layout: MLPLayout
    gates: list
    start: int
    keep: bool


def write_periods(call: PeriodCall, t0: int, t1: int, m, momentum, snapshot, carry,
                  buffers=None, written: int = 0):
    """The writes of the call's tokens [t0, t1) (inside one chunk), from the state m and
    momentum (by part) with every gradient at `snapshot`, `carry` the sum a cut stream left in
    the first period: (m, momentum, the state after each completed period, the unfinished last
    period's gradient sum or None). With `buffers` (no graph) the states are written into
    their stack from index `written`."""
    level, period = call.level, call.level.period
    # a gate [B, H] as a factor of each part
    shaped = [lambda g, w=w: g.view(g.shape + (1,) * (w.ndim - 2)) for w in m]
    offset = (call.start + t0) % period
    sums = _period_gradients(call.values, level, call.form, call.layout, snapshot, t0, t1,
                             offset, call.keep)                   # [B, H, g, *part] per part
    ends = [min(t0 - offset + (n + 1) * period, t1) for n in range(sums[0].shape[2])]
    # unbound once: indexing a period out of a stacked tensor would, in the backward pass,
    # fill a zero tensor of the whole stack per period
    sums = [list(part.unbind(2)) for part in sums]                         # [B, H, *part]
    if carry is not None:                    # the period a cut stream left unfinished
        sums = [[g[0] + c] + g[1:] for g, c in zip(sums, carry)]
    done = sum((call.start + end) % period == 0 for end in ends)  # all groups but a partial last
    at = torch.tensor([end - 1 for end in ends[:done]], dtype=torch.long,
                      device=call.gates[0].device)
    lr, decay, *beta = (g.index_select(-1, at).unbind(-1) for g in call.gates)  # [B, H] each
    states = []
    for j in range(done):
        target = tuple(b[:, :, written + j] for b in buffers) if buffers else None
        m, momentum = _step(m, momentum, [g[j] for g in sums], lr[j], decay[j],
                            beta[0][j] if beta else None, shaped, target)
        if not level.backprop:
            m = tuple(w.detach() for w in m)
            momentum = tuple(v.detach() for v in momentum) if momentum is not None else None
        states.append(m)
    partial = [g[-1] for g in sums] if done < len(ends) else None          # [B, H, *part]
    return m, momentum, states, partial


def _step(m, momentum, grads, lr, decay, beta, shaped, out=None):
    """One rule step on every part: S = beta S - lr G, M = decay M + S (momentum) or
    M = decay M - lr G; gates [B, H] (`shaped` makes each a factor of its part). With `out`
    (no autograd graph) the new M is written there and S is updated in place."""
    if out is None and momentum is not None:
        momentum = tuple(torch.addcmul(v * f(beta), f(lr), g, value=-1)
                         for v, g, f in zip(momentum, grads, shaped))
        return tuple(torch.addcmul(v, f(decay), w) for w, v, f in zip(m, momentum, shaped)), \
            momentum
    if out is None:
        return tuple(torch.addcmul(w * f(decay), f(lr), g, value=-1)
                     for w, g, f in zip(m, grads, shaped)), None
    for w, g, f, o, v in zip(m, grads, shaped, out, momentum or [None] * len(m)):
        if v is not None:
            v.mul_(f(beta)).addcmul_(f(lr), g, value=-1)
            torch.addcmul(v, f(decay), w, out=o)
        else:
            torch.mul(w, f(decay), out=o).addcmul_(f(lr), g, value=-1)
    return out, momentum


def _period_gradients(values, level: TokenLevel, form: PeriodicForm, layout: MLPLayout,
                      snapshot: tuple, t0: int, t1: int, offset: int, keep: bool) -> list:
    """Each period's summed gradient G_n over the call's tokens [t0, t1) of one chunk, per part
    ([B, H, g, o, i] per layer, then gamma's [B, H, g, d_L]), all at `snapshot` (by part, as
    mlp.layers gives it); the first period has `offset` tokens before t0. One
    forward of the loss, one backward to the pre-activations (and to `layernorm`'s scaled
    output): each token's loss depends on its own nodes only, so the gradient of the summed
    loss is every token's own."""
    deltas, inputs = loss_factors(
        layout, snapshot, level.heads, keep,
        lambda apply: values.evaluate_window(level, form.loss, t0, t1, apply))    # [B, L, (H)]
    if not keep:
        deltas, inputs = [d.detach() for d in deltas], [a.detach() for a in inputs]
    depth = len(layout.layers)
    group = lambda a: group_by_period(a, offset, level.period)                       # [B, H, g, N, d]
    parts = [group(d).mT @ group(a)                                         # [B, H, g, o, i]
             for d, a in zip(deltas[:depth], inputs[:depth])]
    if layout.norm:
        parts.append(group(deltas[-1] * inputs[-1]).sum(-2))                # [B, H, g, d_L]
    return parts
