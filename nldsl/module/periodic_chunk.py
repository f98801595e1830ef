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
             periods, two fused elementwise ops (addcmul) per weight part [B, H, o, i]
             (these two: module/period_writes.py);
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
Memory for the backward pass, per sequence and head: the factors, T (d_0 + ... + d_L) numbers,
and the period states and gradient sums, (T / N) P each: linear in T, P once per period.

With `checkpoint` (nldsl.compile(..., checkpoint=True)) the call is cut into regions of R
tokens (`block_size` rounded up to whole periods, cut again at the chunk boundaries: the chunk
may be the whole stream, batch_size = 0), each recomputed in the backward pass
(`_checkpointed_region`): only the regions' start states and momentum, 2 (T / R) P, and the
gates, queries and contexts stay, plus one region's factors, states and inner graph while its
backward runs; the same operations, so the same values up to rounding. It costs one more
forward of the regions; torch's checkpoint also reruns each region's loss in the forward pass
for the inner backward and keeps the layer inputs it made, T (d_0 + ... + d_{L-1}) numbers,
until the backward pass. Measured (titans_pytorch, dim 256, 4 heads of 64, chunk_size 64, B 2,
T 1024, float32; benchmarks/bench_periodic_memory.py): 143 MB held for backward without, 57 MB
with (docs/modules.md).
"""
from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import checkpoint

from nldsl.lower.periodic_forms import PeriodicForm
from nldsl.lower.program import MLPLayout, TokenLevel
from nldsl.module.deep_chunk import chunk_segments
from nldsl.module.deep_sums import batched_forward
from nldsl.module.period_means import bind_period_means, group_by_period
from nldsl.module.period_writes import PeriodCall, write_periods
from nldsl.runtime import mlp

STREAM = "_stream"


def run_periodic_level(values, level: TokenLevel, form: PeriodicForm, per_head,
                       block: int) -> None:
    """Write the level's state and bind its reads over the whole call. `values` is the chunked
    schedule's sequence values; `per_head(value, width)` gives [B, H, T(, width)]; under
    `checkpoint` a region is `block` tokens rounded up to whole periods, inside one chunk."""
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
    call = PeriodCall(values, level, form, layout, gates, start, keep)
    checkpointed = keep and values.checkpoint
    if checkpointed:              # the loss's contexts made outside the checkpointed regions
        values.prepare(level, form.loss)
    states, parts, partial = [m], [], None  # the state after each write of the call; reads
    buffers = None
    if not torch.is_grad_enabled():  # no graph: the states go straight into the reads' stack
        groups = -(-(start % period + 1 + steps) // period)                 # J
        buffers = [w.new_empty(w.shape[:2] + (groups,) + w.shape[2:]) for w in m]
        for b, w in zip(buffers, m):
            b[:, :, 0] = w
        momentum = tuple(v.clone() for v in momentum) if momentum is not None else None
    # checkpointed: regions of whole periods inside a chunk (which may be the whole stream)
    region = -(-block // period) * period if checkpointed else level.chunk
    for t0, t1 in _regions(start, steps, level.chunk, region):
        if (start + t0) % level.chunk == 0:
            snapshot = m
        if checkpointed:
            rerun = functools.partial(_checkpointed_region, call, queries, t0, t1)
            (m, momentum, partial), read = checkpoint(rerun, m, momentum, snapshot, carry,
                                                      use_reentrant=False)
            parts.append(read)
        else:
            m, momentum, written, partial = write_periods(call, t0, t1, m, momentum, snapshot,
                                                          carry, buffers, len(states))
            states += written
        carry = None
    flat = lambda parts: mlp.flatten(layout, parts) if level.heads is not None else \
        mlp.flatten(layout, parts).squeeze(1)
    own[s] = flat(m)
    last = steps - 1 - (start + steps - 1) % level.chunk          # the call's last chunk start
    if level.chunk > 1 and last >= 0:      # the reference keeps the state it started from
        own[f"{s}.chunk_start"] = flat(snapshot)
    if momentum is not None:
        own[f"{s}_momentum"] = flat(momentum)
    own.pop(f"{s}.rule.pending", None)
    if partial is not None:
        own[f"{s}.pending"] = flat(partial)
        own[f"{s}.rule.pending"] = tuple(_last(r, g, level) for r, g in zip(raw, gates))
    if checkpointed:
        reads = {name: torch.cat([read[name] for read in parts], dim=2) for name in queries}
    else:
        stacked = buffers or [torch.stack(part, dim=2) for part in zip(*states)]  # [B, H, J, ..]
        reads = _reads(layout, stacked, queries, start % period + 1, period)
    for name, y in reads.items():
        y = y.transpose(1, 2)                                               # [B, T, H, d_L]
        values.bound[name] = y if level.heads is not None else y[:, :, 0]
    for name, expr in form.reads.items():
        values.memo[name] = (values.evaluate(level, expr), values.frames[level.name])


def _regions(start: int, steps: int, chunk: int, length: int) -> list[tuple[int, int]]:
    """The call's tokens cut at the chunk boundaries and, inside each chunk, at the stream's
    multiples of `length` (both multiples of the period: every cut ends a period)."""
    return [(t0 + a, t0 + b) for t0, t1 in chunk_segments(start, steps, chunk)
            for a, b in chunk_segments(start + t0, t1 - t0, length)]


def _checkpointed_region(call: PeriodCall, queries: dict, t0: int, t1: int, m, momentum,
                         snapshot, carry):
    """The call's tokens [t0, t1) (whole periods of one chunk, or the parts in the call) as a
    function of the state, momentum, snapshot and carried sum (by part): ((m, momentum,
    unfinished sum or None), their reads {name: [B, H, L, d_L]}). Under `checkpoint` the
    backward pass keeps only these arguments and calls it again."""
    new_m, new_momentum, states, partial = write_periods(call, t0, t1, m, momentum, snapshot,
                                                         carry)
    stacked = [torch.stack(part, dim=2) for part in zip(m, *states)]      # [B, H, J, *part]
    period = call.level.period
    reads = _reads(call.layout, stacked, {name: u[:, :, t0:t1] for name, u in queries.items()},
                   (call.start + t0) % period + 1, period)
    return (new_m, new_momentum, partial), reads


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
    tensor one scalar per head [B, H], or without heads the last token's value as it was
    computed ([B, 1] for a gate of width 1, [B] for a number per token)."""
    if not isinstance(value, torch.Tensor):
        return value
    return gate[:, :, -1] if level.heads is not None else value[:, -1]
