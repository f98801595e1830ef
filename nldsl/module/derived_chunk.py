"""The chunk form of a level that reads through a derived memory (lower/derived_forms.py), one
Python iteration per chunk.

The state A is written as the deep form's M (module/deep_chunk.py): every token's gradient at
the chunk start from one batched forward and backward of the loss at D(A_{t'}) (D the
straight-through memory, so G_t = grad_D l_t = sum_i delta_{i,t} a_{i-1,t}^T), and

    A_t = P_t A_0 + B_t S_0 + sum_{s<=t} K_ts G_s          (deep_sums.chunk_coefficients)

is linear in them. A read R(A_t)(u_t) of a derived memory R = f(A) is not: f needs A_t itself.
Per chunk and layer the tokens' states are materialised (`_states`: one GEMM per sequence and
head, L^2 P multiply-adds per chunk, T L P over a call, P the weight count) and f is evaluated
on them as the reference evaluates it on one state (the same per-weight expression, the
tokens a batch dim). Then, cheapest first:

    R = A op g, g_t a number per matrix (Moneta: g = ||A||_q^{q-2} + eps): only g_t needs A_t;
        R_t h = (A_t h) op g_t is the deep form's masked [L, L] read, scaled per token
        (`_read_scaled`), never the L P weights times h;
    R = A (the state itself): the deep form's read, no materialisation;
    any other R (Memora: c softmax(A)): R(A_t) for every token, [B, H, L, o, i] per layer, and
        one batched matrix-vector product per layer (`_forward_per_token`).

`before write` reads see R(A_{t'}), evaluated once per chunk.

Memory: a chunk's materialised states are L P numbers per sequence, head and layer at a time;
for the backward pass autograd keeps them and f's intermediates (Moneta: |A|, |A|^q; Memora:
the softmax) for every chunk: a few T P numbers per sequence and head, linear in T but per
token, unlike the deep form's (T / C) P. With `checkpoint` (nldsl.compile(..., checkpoint=True))
each chunk is recomputed in the backward pass: only its start state, momentum and snapshot stay
(as in deep_chunk), plus one chunk's few L P at a time, for one more forward of the chunk.
"""
from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import checkpoint

from nldsl.language import ast
from nldsl.lower.derived_forms import DerivedForm
from nldsl.lower.program import MLPLayout, TokenLevel
from nldsl.module.deep_chunk import chunk_segments, gradient_factors, start_states, store_states
from nldsl.module.deep_sums import (batched_forward, chunk_end, chunked_coefficients, last_row,
                                    masked_read)
from nldsl.runtime import mlp
from nldsl.runtime.evaluate import FrameEvaluator
from nldsl.runtime.frame import Frame


def run_derived_level(values, level: TokenLevel, form: DerivedForm, per_head) -> None:
    """Write the level's state and bind its reads over the whole call (the chunked schedule's
    sequence values; `per_head(value, width)` gives [B, H, T(, width)])."""
    layout = level.states[form.state].mlp
    own = values.new_state[level.name]
    heads = level.heads
    keep = level.backprop and torch.is_grad_enabled()
    gate = lambda e: per_head(values.evaluate(level, e), None) if e is not None else None
    lr, decay, beta, clip = (gate(e) for e in (form.lr, form.decay, form.beta, form.clip))
    queries = {name: (memory, per_head(values.evaluate(level, u), layout.widths[0]), before)
               for name, (memory, u, before) in form.queries.items()}    # [B, H, T, d_0]
    if not keep:
        lr, decay, beta, clip = (g.detach() if g is not None else None
                                 for g in (lr, decay, beta, clip))
    m, s, snapshot, incoming_m = start_states(own, form.state, layout, heads, beta is not None,
                                              keep)
    start = values.new_state["_stream"]["t"]
    segments = chunk_segments(start, values.x.shape[1], level.chunk)
    width = max(t1 - t0 for t0, t1 in segments)
    coefficients = chunked_coefficients(lr, decay, beta, segments, width)
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
    store_states(own, form.state, layout, heads, m, s, snapshot)
    for name in queries:
        y = torch.cat([part[name] for part in parts], dim=2).transpose(1, 2)  # [B, T, H, d_L]
        values.bound[name] = y if heads is not None else y[:, :, 0]
    for name, expr in form.reads.items():
        values.memo[name] = (values.evaluate(level, expr), values.frames[level.name])


def _chunk(values, level: TokenLevel, form: DerivedForm, layout: MLPLayout, queries: dict,
           coefficients, n: int, t0: int, t1: int, clip, keep: bool, m, s, snapshot):
    """Chunk n (tokens [t0, t1)) from its start state, momentum and snapshot (by layer,
    [B, H, o, i]): the end state and momentum, and its reads {name: [B, H, L, d_L]}."""
    weights = _Weights(values.program.hparams, form)
    trained = weights.derived(form.trained, snapshot)
    deltas, inputs = gradient_factors(values, level, form, layout, trained, t0, t1, keep, clip)
    length = t1 - t0
    own = tuple(c[:, :, n, :length] if c is not None and c.ndim == 4 else
                c[:, :, n, :length, :length] if c is not None else None for c in coefficients)
    factors = (m, s, own, deltas, inputs)
    states = functools.cache(lambda: tuple(_states(factors, i) for i in range(len(m))))
    reads = {}
    for name, (memory, u, before) in queries.items():
        u = u[:, :, t0:t1]                                                 # [B, H, L, d_0]
        if before:
            reads[name] = batched_forward(layout, weights.derived(memory, snapshot), u)
        elif memory == form.state or weights.scaled(memory, m):
            scales = [weights.scale(memory, w) for w in states()] \
                if memory != form.state else [None] * len(m)
            reads[name] = _read_scaled(layout, factors, u, scales,
                                       form.scales.get(memory, ("*",))[0])
        else:
            reads[name] = _forward_per_token(layout, weights.derived(memory, states()), u)
    return chunk_end(m, s, last_row(coefficients, n, length), deltas, inputs), reads


def _states(factors, i: int) -> torch.Tensor:
    """A_{i,t} for every token of the chunk, [B, H, L, d_i, d_{i-1}], from the start state and
    momentum (by layer, [B, H, o, i]), the chunk's coefficients (A, B [B, H, L]; K [B, H, L, L])
    and factors: one GEMM per sequence and head, [(t, o), s] @ [s, i] with rows K_ts delta_{s,o}
    (L^2 P multiply-adds), then the start terms."""
    m, s, (a, b, k, _, _), deltas, inputs = factors
    length, d_out = deltas[i].shape[2:]
    rows = k.unsqueeze(-2) * deltas[i].mT.contiguous().unsqueeze(-3)       # [B, H, t, o, s]
    w = (rows.flatten(2, 3) @ inputs[i]).unflatten(2, (length, d_out))     # [B, H, L, o, i]
    # in place (no fresh L P block) unless autograd would have to copy the GEMM's output
    add = torch.addcmul if w.requires_grad else torch.Tensor.addcmul_
    w = add(w, a[..., None, None], m[i].unsqueeze(2))
    if b is not None:
        w = add(w, b[..., None, None], s[i].unsqueeze(2))
    return w


def _read_scaled(layout: MLPLayout, factors, u, scales, op: str):
    """R_t(u_t) for R = A op g, g_t a number per weight matrix and token (`scales`, [B, H, L]
    per layer; None: 1), without forming A_t: deep_chunk's masked read, each layer's
    W_{i,t} h op g_t."""
    m, s, coefficients, deltas, inputs = factors

    def scale(i, z):
        if scales[i] is None:
            return z
        return z / scales[i].unsqueeze(-1) if op == "/" else z * scales[i].unsqueeze(-1)

    return masked_read(layout, m, s, coefficients, deltas, inputs, u, scale)


def _forward_per_token(layout: MLPLayout, weights, u):
    """M_t(u_t) with each token's own weights [B, H, L, d_out, d_in] per layer: a batched
    matrix-vector product per layer, u [B, H, L, d_0] -> [B, H, L, d_L]."""
    h = u
    for i, w in enumerate(weights):
        z = (w @ h.unsqueeze(-1)).squeeze(-1)                              # [B, H, L, d_out]
        h = mlp.ACTIVATIONS[layout.activation](z) if i < len(weights) - 1 else z
    return h + u if layout.residual else h


class _Weights:
    """Derived memories evaluated layer by layer as the reference evaluates them
    (runtime/layerwise.py): per chunk on [B, H, o, i], per token on [B, H, L, o, i]. A
    per-weight expression names only weights, numbers and hyper-parameters
    (lower/derived_forms.py), so the sequences, heads and tokens are all batch dims of one
    frame, and no value is ever split into heads."""

    def __init__(self, hparams: dict, form: DerivedForm):
        self.hparams, self.form = hparams, form

    def evaluate(self, expr, weight: torch.Tensor):
        """expr on one layer's weights of the state [*batch, o, i]: its value."""
        frame, form = Frame(weight.ndim - 2), self.form
        memo = {form.state: weight}

        def lookup(n):
            if n not in memo:
                memo[n] = self.hparams[n] if n not in form.memories else \
                    FrameEvaluator(frame, lookup, _no_apply, _no_apply)(form.memories[n])
            return memo[n]
        return FrameEvaluator(frame, lookup, _no_apply, _no_apply)(expr)

    def derived(self, name: str, weights):
        """The memory `name` (the state or a derived one) at `weights` (by layer)."""
        if name == self.form.state:
            return weights
        return tuple(self.evaluate(ast.Name(id=name), w).expand(w.shape) for w in weights)

    def scaled(self, name: str, m) -> bool:
        """Is the memory A op g with g a number per weight matrix (shapes probed on `meta`)?"""
        if name not in self.form.scales:
            return False
        g = self.form.scales[name][1]
        for w in m:
            value = self.evaluate(g, torch.empty(w.shape, device="meta", dtype=w.dtype))
            if isinstance(value, torch.Tensor) and value.shape[w.ndim - 2:].numel() != 1:
                return False
        return True

    def scale(self, name: str, w: torch.Tensor):
        """g_t of one layer for every token, [B, H, L], from its materialised weights A_t
        [B, H, L, o, i]."""
        value = torch.as_tensor(self.evaluate(self.form.scales[name][1], w), dtype=w.dtype)
        value = value.reshape(value.shape[:3]) if value.ndim >= 3 else value
        return value.expand(w.shape[:3])


def _no_apply(*args):
    raise KeyError("a forward pass inside a derived memory (lower/derived_forms.py refuses it)")
