"""The chunk form of a deep memory (lower/deep_forms.py), one Python iteration per chunk.

All gradients of a chunk of L tokens are taken at its snapshot M_g (Titans eq. 16), so one
batched forward of the loss at M_g and one backward give every token's per-layer factors:

    G_t = sum_i delta_{i,t} a_{i-1,t}^T        layer i: z_i = W_i a_{i-1}, delta_i = dl_t / dz_i

(a bias-free layer's gradient is delta a^T whatever the loss; the guard `clip` scales each
delta_{i,t} first, module/guard.py). The rule is linear in the G's, so the reads and the
chunk's end state are sums over its tokens (module/deep_sums.py). Memory for the backward pass,
per sequence and head: the factors, a few T (d_0 + ... + d_L) numbers; the chunk-start weights
(and momentum), (T / L) P; the gate products, T L: linear in T, with P (the weight count) once
per chunk, never per token.
With `checkpoint` (nldsl.compile(..., checkpoint=True)) each chunk is recomputed in the backward
pass (`_checkpointed_chunk`), so only (T / L) P for the start states, the gates and the
contexts stay, plus one chunk's activations at a time: one more forward of the memory's work.
"""
from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import checkpoint

from nldsl.lower.deep_forms import DeepForm
from nldsl.lower.program import MLPLayout, TokenLevel
from nldsl.module.deep_sums import (batched_forward, chunk_end, chunk_slots, chunked_coefficients,
                                    last_row, last_rows, masked_read, pad_to, start_stacks)
from nldsl.module.guard import clip_factors
from nldsl.runtime import mlp


def run_deep_level(values, level: TokenLevel, form: DeepForm, per_head) -> None:
    """Write the level's state and bind its reads over the whole call. `values` is the chunked
    schedule's sequence values; `per_head(value, width)` gives [B, H, T(, width)]."""
    layout = level.states[form.state].mlp
    own = values.new_state[level.name]
    steps = values.x.shape[1]
    heads = level.heads
    keep = level.backprop and torch.is_grad_enabled()
    lr = per_head(values.evaluate(level, form.lr), None)                   # [B, H, T]
    decay = per_head(values.evaluate(level, form.decay), None)             # [B, H, T]
    beta = per_head(values.evaluate(level, form.beta), None) if form.beta is not None else None
    clip = per_head(values.evaluate(level, form.clip), None) if form.clip is not None else None
    queries = {name: (per_head(values.evaluate(level, u), layout.widths[0]), before)
               for name, (u, before) in form.queries.items()}              # [B, H, T, d_0]
    if not keep:
        lr, decay = lr.detach(), decay.detach()
        beta = beta.detach() if beta is not None else None
        clip = clip.detach() if clip is not None else None
    m, s, snapshot, incoming_m = start_states(own, form.state, layout, heads, beta is not None,
                                              keep)
    start = values.new_state["_stream"]["t"]
    segments = chunk_segments(start, steps, level.chunk)
    width = max(t1 - t0 for t0, t1 in segments)   # the padded chunk: never more than the call
    coefficients = chunked_coefficients(lr, decay, beta, segments, width)
    kept, parts = [], []            # per chunk: start state, snapshot and factors; or reads
    checkpointed = keep and values.checkpoint
    if checkpointed:
        values.prepare(level, form.loss)
    per_token = any(not before for _, before in queries.values())
    stacked = start_stacks(m, s, len(segments)) if per_token and not keep else None
    rows = last_rows(coefficients, segments) if not checkpointed else None
    for n, (t0, t1) in enumerate(segments):
        if (start + t0) % level.chunk == 0:
            snapshot = m if keep or t0 else incoming_m
        if checkpointed:
            chunk = functools.partial(_checkpointed_chunk, values, level, form, layout, queries,
                                      coefficients, n, t0, t1, width, clip)
            (m, s), part = checkpoint(chunk, m, s, snapshot, use_reentrant=False)
            parts.append(part)
            continue
        deltas, inputs = gradient_factors(values, level, form, layout, snapshot, t0, t1, keep, clip)
        kept.append((m, s, snapshot, deltas, inputs))
        slots = chunk_slots(stacked, n + 1) if stacked and n + 1 < len(segments) else None
        m, s = chunk_end(m, s, rows[n], deltas, inputs, slots)
    reads = {name: torch.cat([part[name] for part in parts], dim=2) for name in queries} \
        if checkpointed else _reads(layout, queries, segments, width, kept, coefficients, stacked)
    store_states(own, form.state, layout, heads, m, s, snapshot)
    for name, y in reads.items():
        y = y.transpose(1, 2)                                              # [B, T, H, d_L]
        values.bound[name] = y if heads is not None else y[:, :, 0]
    for name, expr in form.reads.items():
        values.memo[name] = (values.evaluate(level, expr), values.frames[level.name])


def _checkpointed_chunk(values, level, form: DeepForm, layout: MLPLayout, queries: dict,
                        coefficients, n: int, t0: int, t1: int, width: int, clip, m, s,
                        snapshot):
    """One chunk as a function of its start state, momentum and snapshot (by layer): the end
    state and momentum, and the chunk's reads {name: [B, H, L, d_L]}. Under `checkpoint` the
    backward pass keeps only these arguments and calls it again."""
    deltas, inputs = gradient_factors(values, level, form, layout, snapshot, t0, t1, True, clip)
    own = tuple(c[:, :, n:n + 1] if c is not None else None for c in coefficients)  # N = 1
    reads = _reads(layout, queries, [(t0, t1)], width, [(m, s, snapshot, deltas, inputs)], own)
    return chunk_end(m, s, last_row(coefficients, n, t1 - t0), deltas, inputs), reads


def gradient_factors(values, level, form: DeepForm, layout: MLPLayout, snapshot, t0: int,
                     t1: int, keep: bool, clip=None):
    """delta_i [B, H, L, d_i] and a_{i-1} [B, H, L, d_{i-1}] per layer, from one forward of the
    loss over tokens [t0, t1) at `snapshot` ([B, H, o, i] per layer) and one backward to the
    pre-activations.
    Each token's loss depends on its own pre-activations only, so the gradient of the summed
    loss is every token's own. With the guard (`clip` [B, H, T]) the deltas come out clipped
    (module/guard.py)."""
    deltas, inputs = loss_factors(
        layout, snapshot, level.heads, keep,
        lambda apply: values.evaluate_window(level, form.loss, t0, t1, apply))    # [B, L, (H)]
    if clip is not None:
        deltas = clip_factors(deltas, inputs, clip[:, :, t0:t1])
    if not keep:
        deltas, inputs = [d.detach() for d in deltas], [a.detach() for a in inputs]
    return deltas, inputs


# torch.compile: an inner torch.autograd.grad in a traced graph loses the tensors it
# differentiates (they come out of another graph), so the inner gradients run eagerly
@torch.compiler.disable
def loss_factors(layout: MLPLayout, snapshot, heads, keep: bool, loss_of):
    """delta_i [B, H, L, d_i] and a_{i-1} [B, H, L, d_{i-1}] per layer (with `layernorm`, then
    the gradient at the scaled output and the normed output): `loss_of(apply)`, the per-token
    loss with `apply(name, u)` the memory at `snapshot` (one batched forward, made once: the
    loss may name M(u) again, for the same u, deep_forms.py), and one backward of its sum to
    the pre-activations (create_graph when `keep`)."""
    to_heads = (lambda a: a.movedim(1, 2)) if heads is not None else (lambda a: a.unsqueeze(1))
    to_frame = (lambda a: a.movedim(2, 1)) if heads is not None else (lambda a: a.squeeze(1))
    inputs, pre, outputs = [], [], []

    def apply(name, u):
        if not outputs:
            h = to_heads(u)                                                # [B, H|1, L, d_0]
            h = h.expand(snapshot[0].shape[:2] + h.shape[2:])             # [B, H, L, d_0]
            outputs.append(to_frame(batched_forward(layout, snapshot, h, inputs, pre)))
        return outputs[0]

    with torch.enable_grad():
        deltas = list(torch.autograd.grad(loss_of(apply).sum(), pre, create_graph=keep))
    return deltas, inputs


def start_states(own: dict, name: str, layout: MLPLayout, heads, momentum: bool, keep: bool):
    """The level's state, momentum (None without) and chunk-start snapshot by layer
    [B, H, o, i], and the state as it came in. Without outer gradients the written states are
    constants (detached), while a `before write` read of the call's first chunk sees the state
    that came in."""
    head_first = (lambda a: a) if heads is not None else (lambda a: a.unsqueeze(1))
    by_layer = lambda flat: mlp.layers(layout, head_first(flat))           # [B, H, o, i] each
    m = by_layer(own[name])
    s = by_layer(own[f"{name}_momentum"]) if momentum else None
    snapshot = by_layer(own.get(f"{name}.chunk_start", own[name]))
    incoming = m
    if not keep:
        m = tuple(w.detach() for w in m)
        s = tuple(w.detach() for w in s) if s is not None else None
    return m, s, snapshot, incoming


def store_states(own: dict, name: str, layout: MLPLayout, heads, m, s, snapshot) -> None:
    """The end state, momentum and snapshot (by layer) back into the level's state, flat."""
    flat = (lambda ws: mlp.flatten(layout, ws)) if heads is not None else \
        (lambda ws: mlp.flatten(layout, ws).squeeze(1))
    own[name] = flat(m)
    if s is not None:
        own[f"{name}_momentum"] = flat(s)
    own[f"{name}.chunk_start"] = flat(snapshot)


def chunk_segments(start: int, steps: int, chunk: int) -> list[tuple[int, int]]:
    """The call's tokens [0, steps) cut at the stream's chunk boundaries (t counts from 1, so
    a chunk starts where (start + t0) % chunk == 0): the first may continue a chunk, the last
    may end early."""
    cuts, t0 = [], 0
    while t0 < steps:
        t1 = min(steps, t0 + chunk - (start + t0) % chunk)
        cuts.append((t0, t1))
        t0 = t1
    return cuts


def _reads(layout: MLPLayout, queries: dict, segments, chunk: int, kept, coefficients,
           stacked=None) -> dict:
    """Every read M_t(u_t) of the call, all chunks at once: the per-chunk start states, factors
    and inputs stacked on a chunk axis [B, H, N, C, ...] (padded tokens have zero factors), so
    each layer is one batched matmul over the call instead of one per chunk. `stacked`: the
    start states and momenta already written on that axis (`start_stacks`)."""
    stack = lambda parts: torch.stack(parts, dim=2)
    per_layer = lambda j: [stack([c[j][i] for c in kept]) for i in range(len(layout.layers))] \
        if kept[0][j] is not None else None
    befores = {before for _, before in queries.values()}
    m, s = (stacked or (per_layer(0), per_layer(1))) if False in befores else (None, None)
    snapshot = per_layer(2) if True in befores else None
    factors = lambda j: [stack([pad_to(c[j][i], -2, chunk) for c in kept])
                         for i in range(len(layout.layers))] if False in befores else None
    deltas, inputs = factors(3), factors(4)                                # [B, H, N, C, d]
    reads = {}
    for name, (u, before) in queries.items():
        u = stack([pad_to(u[:, :, t0:t1], -2, chunk) for t0, t1 in segments])  # [B, H, N, C, d_0]
        y = batched_forward(layout, snapshot, u) if before else \
            masked_read(layout, m, s, coefficients, deltas, inputs, u)
        reads[name] = torch.cat([y[:, :, n, :t1 - t0] for n, (t0, t1) in enumerate(segments)],
                                dim=2)                                     # [B, H, T, d_L]
    return reads
