"""The periodic form of a `once` level (lower/periodic_forms.py): one Python iteration per write
period at most, the same values as the reference schedule.

Between writes the memory is frozen, and every gradient of a chunk is taken at one snapshot
M_g, so with N the period and the call's tokens grouped by period:

  gradients  one forward of the loss over the chunk's tokens at M_g and one backward to the
             pre-activations z_i give every token's factors; a bias-free layer's gradient is
             delta_{i,t} a_{i-1,t}^T, `layernorm`'s gamma's is (dl_t / d o_t) * LN(z_L,t) with
             o = LN(z_L) (gamma + 1), so a period's summed gradient G_n is one batched matmul
             per layer over the period's tokens ([N, o]^T @ [N, i]);
  rule       S_n = beta_n S_{n-1} - lr_n G_n, M_n = decay_n M_{n-1} + S_n (or M_n = decay_n
             M_{n-1} - lr_n G_n) with the gates of the period's last token: a loop over the
             periods, two fused elementwise ops (addcmul) per weight part [B, H, o, i];
  reads      token t reads M_{floor(t / N)}: the states stacked [B, H, J, o, i] per part and
             the queries grouped by the state they see [B, H, J, N, d_0], one batched forward
             per layer.

The memory is kept by part (mlp.layers' views) inside the call and flattened once at its end:
a flat [B, H, g, P] of the per-period sums would cost one concatenation of all of them.

`period_mean(a)` in a context is the reference's running mean over the period so far
(module/unit.py; module/period_means.py), computed for the whole call by a cumulative sum per period (the sum a cut
stream left in the state continues it). A call that ends inside a period leaves what the
reference leaves: the period's gradient sum `S.pending` and the last token's rule arguments
`S.rule.pending` (module/reference.py's `finish` then flushes or drops them).
Memory for the backward pass, per sequence and head: the factors, T (d_0 + ... + d_L) numbers;
the period states and gradient sums, (T / N) P each: linear in T, P once per period. (No
per-chunk checkpointing here: `checkpoint=True` does not change this form.)
"""
from __future__ import annotations

import torch

from nldsl.lower.periodic_forms import PeriodicForm
from nldsl.lower.program import MLPLayout, TokenLevel
from nldsl.module.deep_chunk import batched_forward, chunk_segments, loss_factors
from nldsl.module.period_means import bind_period_means, group_by_period
from nldsl.runtime import mlp

STREAM = "_stream"


def run_periodic_level(values, level: TokenLevel, form: PeriodicForm, per_head) -> None:
    """Write the level's state and bind its reads over the whole call. `values` is the chunked
    schedule's sequence values; `per_head(value, width)` gives [B, H, T(, width)]."""
    layout, s = level.states[form.state].mlp, form.state
    own = values.new_state[level.name]
    steps, period = values.x.shape[1], level.period
    start = values.new_state[STREAM]["t"]
    head_first = (lambda a: a) if level.heads is not None else (lambda a: a.unsqueeze(1))
    keep = level.backprop and torch.is_grad_enabled()
    bind_period_means(values, level, own, start)
    raw = [values.evaluate(level, g) for g in (form.lr, form.decay, form.beta) if g is not None]
    gates = [per_head(g, None) for g in raw]                                # [B, H, T] each
    if not keep:
        gates = [g.detach() for g in gates]
    queries = {name: per_head(values.evaluate(level, u), layout.widths[0])
               for name, u in form.queries.items()}                         # [B, H, T, d_0]
    by_part = lambda flat: mlp.layers(layout, head_first(flat))      # [B, H, o, i].., gamma
    m = by_part(own[s])
    momentum = by_part(own[f"{s}_momentum"]) if form.beta is not None else None
    snapshot = by_part(own.get(f"{s}.chunk_start", own[s]))
    carry = own.pop(f"{s}.pending", None)
    carry = by_part(carry) if carry is not None else None
    # a gate [B, H] as a factor of each part
    shaped = [lambda g, w=w: g.view(g.shape + (1,) * (w.ndim - 2)) for w in m]
    states, partial = [m], None     # the state after each write of the call, from the start's
    buffers = None
    if not torch.is_grad_enabled():  # no graph: the states go straight into the reads' stack
        groups = -(-(start % period + 1 + steps) // period)                 # J
        buffers = [w.new_empty(w.shape[:2] + (groups,) + w.shape[2:]) for w in m]
        for b, w in zip(buffers, m):
            b[:, :, 0] = w
        momentum = tuple(v.clone() for v in momentum) if momentum is not None else None
    for t0, t1 in chunk_segments(start, steps, level.chunk):
        if (start + t0) % level.chunk == 0:
            snapshot = m
        sums = _period_gradients(values, level, form, layout, snapshot, t0, t1,
                                 (start + t0) % period, keep)     # [B, H, g, *part] per part
        first = t0 - (start + t0) % period                       # the first group's start
        ends = [min(first + (n + 1) * period, t1) for n in range(sums[0].shape[2])]
        # unbound once: indexing a period out of a stacked tensor would, in the backward pass,
        # fill a zero tensor of the whole stack per period
        sums = [list(part.unbind(2)) for part in sums]                     # [B, H, *part]
        if carry is not None:                # the period a cut stream left unfinished
            sums = [[g[0] + c] + g[1:] for g, c in zip(sums, carry)]
            carry = None
        done = sum((start + end) % period == 0 for end in ends)   # all groups but a partial last
        at = torch.tensor([end - 1 for end in ends[:done]], dtype=torch.long,
                          device=gates[0].device)
        lr, decay, *beta = (g.index_select(-1, at).unbind(-1) for g in gates)   # [B, H] each
        for j in range(done):
            target = tuple(b[:, :, len(states)] for b in buffers) if buffers else None
            m, momentum = _step(m, momentum, [g[j] for g in sums], lr[j], decay[j],
                                beta[0][j] if beta else None, shaped, target)
            if not level.backprop:
                m = tuple(w.detach() for w in m)
                momentum = tuple(v.detach() for v in momentum) if momentum is not None else None
            states.append(m)
        if done < len(ends):
            partial = [g[-1] for g in sums]                                 # [B, H, *part]
    flat = lambda parts: mlp.flatten(layout, parts) if level.heads is not None else \
        mlp.flatten(layout, parts).squeeze(1)
    own[s] = flat(m)
    last = steps - 1 - (start + steps - 1) % level.chunk          # the call's last chunk start
    if level.chunk > 1 and last >= 0:      # the reference keeps the state it started from
        own[f"{s}.chunk_start"] = flat(states[(start + last) // period - start // period])
    if momentum is not None:
        own[f"{s}_momentum"] = flat(momentum)
    own.pop(f"{s}.rule.pending", None)
    if partial is not None:
        own[f"{s}.pending"] = flat(partial)
        own[f"{s}.rule.pending"] = tuple(_last(r, g, level) for r, g in zip(raw, gates))
    stacked = buffers or [torch.stack(part, dim=2) for part in zip(*states)]  # [B, H, J, *part]
    reads = _reads(layout, stacked, queries, start % period + 1, period)
    for name, y in reads.items():
        y = y.transpose(1, 2)                                               # [B, T, H, d_L]
        values.bound[name] = y if level.heads is not None else y[:, :, 0]
    for name, expr in form.reads.items():
        values.memo[name] = (values.evaluate(level, expr), values.frames[level.name])


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


def _reads(layout: MLPLayout, weights: list, queries: dict, offset: int, period: int):
    """M_{j(t)}(u_t) for every token: the states by part [B, H, J, o, i] (gamma [B, H, J, d_L]),
    the j-th after the call's j-th write; token i (0-based) sees state (offset + i) // N,
    offset = start mod N + 1."""
    reads = {}
    for name, u in queries.items():
        steps = u.shape[-2]
        h = group_by_period(u, offset, period)                                       # [B, H, J, N, d_0]
        y = batched_forward(layout, weights, h).flatten(-3, -2)             # [B, H, J N, d_L]
        reads[name] = y[..., offset:offset + steps, :]                      # [B, H, T, d_L]
    return reads


def _last(value, gate: torch.Tensor, level: TokenLevel):
    """A rule argument at the call's last token as the reference keeps it: a number as is, a
    tensor one scalar per head [B, H] ([B] without heads)."""
    if not isinstance(value, torch.Tensor):
        return value
    return gate[:, :, -1] if level.heads is not None else gate[:, 0, -1]
