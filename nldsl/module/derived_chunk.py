"""The chunk form of a level that reads through a derived memory (lower/derived_forms.py), one
Python iteration per chunk.

The state A is written as the deep form's M (module/deep_chunk.py): every token's gradient at
the chunk start from one batched forward and backward of the loss at D(A_{t'}) (D the
straight-through memory, so G_t = grad_D l_t = sum_i delta_{i,t} a_{i-1,t}^T), and

    A_t = P_t A_0 + B_t S_0 + sum_{s<=t} K_ts G_s          (deep_chunk._coefficients)

is linear in them. A read R(A_t)(u_t) of a derived memory R = f(A) is not: f (Moneta's
A / ||A||_q^{q-2}, Memora's c softmax(A)) needs A_t itself. So per chunk and layer the
tokens' states are materialised, A_{i,t} = P_t A_{i,0} + B_t S_{i,0} + (K_t. * delta_i)^T a_{i-1}
([L, d_i, L] @ [L, d_{i-1}] per sequence and head: L^2 P multiply-adds per chunk, T L P over a
call, P the weight count), f is evaluated on them as the reference evaluates it on one state
(the same per-weight expression, a frame with the chunk's tokens as a batch dim), and the read
is one batched matrix-vector product per layer, W_{i,t} h_t. `before write` reads see
R(A_{t'}), evaluated once per chunk.

Memory: the chunk's materialised states are [B, H, L, d_i, d_{i-1}] per layer, L P numbers per
sequence and head at a time; for the backward pass autograd keeps them and f's intermediates
for every chunk, a few T P numbers per sequence and head (linear in T, times the weight count:
unlike the deep form, per token). With `checkpoint` (nldsl.compile(..., checkpoint=True)) each
chunk is recomputed in the backward pass: only its start state, momentum and snapshot stay (as
in deep_chunk), plus one chunk's L P at a time, for one more forward of the chunk's work.
"""
from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import checkpoint

from nldsl.lower.derived_forms import DerivedForm
from nldsl.lower.program import MLPLayout, TokenLevel
from nldsl.module.deep_chunk import _by_chunk, _coefficients, _end, _factors, _forward, \
    _last_row, _segments
from nldsl.runtime import mlp
from nldsl.runtime.evaluate import FrameEvaluator
from nldsl.runtime.frame import Frame


def run_derived_level(values, level: TokenLevel, form: DerivedForm, per_head) -> None:
    """Write the level's state and bind its reads over the whole call (the chunked schedule's
    sequence values; `per_head(value, width)` gives [B, H, T(, width)])."""
    layout = level.states[form.state].mlp
    own = values.new_state[level.name]
    heads = level.heads
    head_first = (lambda a: a) if heads is not None else (lambda a: a.unsqueeze(1))
    keep = level.backprop and torch.is_grad_enabled()
    gate = lambda e: per_head(values.evaluate(level, e), None) if e is not None else None
    lr, decay, beta, clip = (gate(e) for e in (form.lr, form.decay, form.beta, form.clip))
    queries = {name: (memory, per_head(values.evaluate(level, u), layout.widths[0]), before)
               for name, (memory, u, before) in form.queries.items()}    # [B, H, T, d_0]
    if not keep:
        lr, decay, beta, clip = (g.detach() if g is not None else None
                                 for g in (lr, decay, beta, clip))
    by_layer = lambda flat: mlp.layers(layout, head_first(flat))           # [B, H, o, i] each
    m = by_layer(own[form.state])
    s = by_layer(own[f"{form.state}_momentum"]) if beta is not None else None
    snapshot = by_layer(own.get(f"{form.state}.chunk_start", own[form.state]))
    if not keep:            # written states are constants; `before write` reads see the start
        incoming_m, m = m, tuple(w.detach() for w in m)
        s = tuple(w.detach() for w in s) if s is not None else None
    start = values.new_state["_stream"]["t"]
    segments = _segments(start, values.x.shape[1], level.chunk)
    width = max(t1 - t0 for t0, t1 in segments)
    by_chunk = lambda g, fill: _by_chunk(g, segments, width, fill) if g is not None else None
    coefficients = _coefficients(by_chunk(lr, 0.0), by_chunk(decay, 1.0), by_chunk(beta, 1.0))
    checkpointed = keep and values.checkpoint
    if checkpointed:
        values.prepare(level, form.loss)
    parts = []
    for n, (t0, t1) in enumerate(segments):
        if (start + t0) % level.chunk == 0:
            snapshot = m if keep or t0 else incoming_m
        chunk = functools.partial(_chunk, values, level, form, layout, queries, coefficients,
                                  n, t0, t1, clip, keep)
        (m, s), part = checkpoint(chunk, m, s, snapshot, use_reentrant=False) \
            if checkpointed else chunk(m, s, snapshot)
        parts.append(part)
    flat = (lambda ws: mlp.flatten(layout, ws)) if heads is not None else \
        (lambda ws: mlp.flatten(layout, ws).squeeze(1))
    own[form.state] = flat(m)
    if s is not None:
        own[f"{form.state}_momentum"] = flat(s)
    own[f"{form.state}.chunk_start"] = flat(snapshot)
    for name in queries:
        y = torch.cat([part[name] for part in parts], dim=2).transpose(1, 2)  # [B, T, H, d_L]
        values.bound[name] = y if heads is not None else y[:, :, 0]
    for name, expr in form.reads.items():
        values.memo[name] = (values.evaluate(level, expr), values.frames[level.name])


def _chunk(values, level: TokenLevel, form: DerivedForm, layout: MLPLayout, queries: dict,
           coefficients, n: int, t0: int, t1: int, clip, keep: bool, m, s, snapshot):
    """Chunk n (tokens [t0, t1)) from its start state, momentum and snapshot (by layer,
    [B, H, o, i]): the end state and momentum, and its reads {name: [B, H, L, d_L]}."""
    derive = lambda name, weights, per_token: _derived(values.program.hparams, level.heads, form,
                                                       name, weights, per_token)
    trained = derive(form.trained, snapshot, False)
    deltas, inputs = _factors(values, level, form, layout, trained, t0, t1, keep, clip)
    length = t1 - t0
    own = tuple(c[:, :, n, :length] if c is not None and c.ndim == 4 else
                c[:, :, n, :length, :length] if c is not None else None for c in coefficients)
    states = _states(m, s, own, deltas, inputs) if not all(
        before for _, _, before in queries.values()) else None         # [B, H, L, o, i] each
    reads = {}
    for name, (memory, u, before) in queries.items():
        u = u[:, :, t0:t1]                                                 # [B, H, L, d_0]
        reads[name] = _forward(layout, derive(memory, snapshot, False), u) if before else \
            _forward_per_token(layout, derive(memory, states, True), u)
    return _end(m, s, _last_row(coefficients, n, length), deltas, inputs), reads


def _states(m, s, coefficients, deltas, inputs):
    """A_t of every token of the chunk, by layer: [B, H, L, d_i, d_{i-1}] from the chunk's
    coefficients (A, B [B, H, L]; K [B, H, L, L]), start state, momentum and factors."""
    a, b, k, _, _ = coefficients
    states = []
    for i, (delta, x) in enumerate(zip(deltas, inputs)):
        scaled = k.unsqueeze(-1) * delta.unsqueeze(-3)                     # [B, H, t, s, o]
        w = torch.addcmul(scaled.mT @ x.unsqueeze(2), a[..., None, None],
                          m[i].unsqueeze(2))                               # [B, H, L, o, i]
        if b is not None:
            w = torch.addcmul(w, b[..., None, None], s[i].unsqueeze(2))
        states.append(w)
    return tuple(states)


def _forward_per_token(layout: MLPLayout, weights, h):
    """M_t(h_t) with each token's own weights [B, H, L, d_out, d_in] per layer: a batched
    matrix-vector product per layer, h [B, H, L, d_0] -> [B, H, L, d_L]."""
    u = h
    for i, w in enumerate(weights):
        z = (w @ h.unsqueeze(-1)).squeeze(-1)                              # [B, H, L, d_out]
        h = mlp.ACTIVATIONS[layout.activation](z) if i < len(weights) - 1 else z
    return h + u if layout.residual else h


def _derived(hparams: dict, heads: int | None, form: DerivedForm, name: str, weights,
             per_token: bool):
    """The memory `name` (the state, or a derived memory's per-weight expression) at the
    states `weights` ([B, H, (L,) o, i] by layer), evaluated layer by layer as the reference
    does (runtime/layerwise.py), in the level's frame with the tokens as a batch dim."""
    if name == form.state:
        return weights
    frame = Frame(2 if per_token else 1, heads)
    if heads is None:
        into, back = (lambda w: w.squeeze(1)), (lambda w: w.unsqueeze(1))
    elif per_token:
        into, back = (lambda w: w.movedim(2, 1)), (lambda w: w.movedim(1, 2))
    else:
        into = back = lambda w: w
    out = []
    for i, weight in enumerate(weights):
        memo = {form.state: into(weight)}

        def lookup(n):
            if n not in memo:
                memo[n] = FrameEvaluator(frame, lookup, _no_apply, _no_apply)(form.memories[n]) \
                    if n in form.memories else hparams[n]
            return memo[n]
        value = lookup(name)
        out.append(back(value.expand(*memo[form.state].shape)))
    return tuple(out)


def _no_apply(*args):
    raise KeyError("a forward pass inside a derived memory (lower/derived_forms.py refuses it)")
