"""The chunk form of a deep memory written through a rule chain and the Omega rule's window
(lower/chain_forms.py: Atlas), one Python iteration per chunk.

Every gradient of a chunk of L tokens is taken at its snapshot M_{t'} (Atlas eq. 15), also the
window terms of the c - 1 tokens before the chunk (module/reference.py: each window's terms at
the snapshot of the token that sums them; at a stream start the window holds the tokens so far).
So one batched forward of the loss over the J = L + c - 1 window tokens j of the chunk at
M_{t'} and one backward to the pre-activations give every term's factors per layer, with
gamma_j inside delta (deep_chunk.py):

    g_j = delta_{i,j} a_{i-1,j}^T,      G_t = sum_j W_tj g_j,   W_tj = [0 <= t - j < c]

a banded [L, J] mask. The transform's buffer is linear in the G's (snapshot_chain.py):
S_t = P^beta_t0 S_0 + sum_{s<=t} P^beta_ts c_s G_s, so with F_ts = P^beta_ts c_s

    S_t = E_t S_0 + sum_j (F W)_tj g_j      (E_t = P^beta_t0; one [L, J] x [J, d_out d_in] GEMM)

materialised per token (Newton-Schulz is not linear), then N_t = NS(S_t) for all L tokens at once
(per weight matrix, the reference's op order, in cache-sized groups of matrices), and

    M_t = P^d_t0 M_0 - sum_{s<=t} P^d_ts lr_s N_s    (one [L, L] x [L, d_out d_in] GEMM)

whose rows are the per-token states: a read M_t(q_t) is one batched matrix-vector product per
layer, and the chunk's end state is the last row. Cost per chunk, sequence, head and layer of
P_i = d_i d_{i-1} weights: 2 J L P_i (momentum) + 2 L^2 P_i (states) flops, besides
Newton-Schulz's (4 + 2 r / w) k r P_i per token (r = min(d_i, d_{i-1}), w the other), the
reference's own, which dominates (Atlas' defaults: 23.6 M flops per token and layer against
4.7 M). Memory for the backward pass: the rank-one terms, S, NS's iterates, N and M_t, per
token (measured ~11.5 P numbers per sequence, head and token, half the reference's). With
`checkpoint` each chunk is recomputed in the backward pass: (T / L) P for the chunk-start
states plus one chunk's worth while it is recomputed.
"""
from __future__ import annotations

import functools

import torch
from torch.utils.checkpoint import checkpoint

from nldsl.language import ast

from nldsl.lower.chain_forms import ChainForm
from nldsl.lower.program import MLPLayout, TokenLevel
from nldsl.module.deep_chunk import chunk_segments, loss_factors
from nldsl.module.deep_sums import batched_forward, gate_products
from nldsl.runtime import mlp
from nldsl.runtime.chain import newton_schulz_state
from nldsl.runtime.evaluate import FrameEvaluator
from nldsl.runtime.frame import Frame

#: the size of a group of matrices Newton-Schulz iterates on at once (`_newton_schulz`)
GROUP_BYTES = 1 << 19


def run_chain_level(values, level: TokenLevel, form: ChainForm, per_head) -> None:
    """Write the level's state (and its window's ring buffers) and bind its reads over the whole
    call. `values` is the chunked schedule's sequence values; `per_head(value, width)` gives
    [B, H, T(, width)]."""
    deep = form.deep
    layout = level.states[deep.state].mlp
    own = values.new_state[level.name]
    heads = level.heads
    head_first = (lambda a: a) if heads is not None else (lambda a: a.unsqueeze(1))
    keep = level.backprop and torch.is_grad_enabled()
    gate = lambda expr: per_head(values.evaluate(level, expr), None)          # [B, H, T]
    lr, decay = gate(deep.lr), gate(deep.decay)
    c = beta = None
    if form.transform is not None:
        beta = gate(form.transform.args["beta"])
        c = gate(form.transform.args["lr"]) if form.transform.rule == "momentum" else 1 - beta
    schulz = {k: values.evaluate(level, v) for k, v in form.newton_schulz.args.items()} \
        if form.newton_schulz is not None else None
    queries = {name: (per_head(values.evaluate(level, u), layout.widths[0]), before)
               for name, (u, before) in deep.queries.items()}               # [B, H, T, d_0]
    if not keep:
        lr, decay = lr.detach(), decay.detach()
        c, beta = (g.detach() if g is not None else None for g in (c, beta))
    width = int(values.evaluate(level, form.width)) if form.width is not None else 1
    past, ext = _extended(values, level, form, own)
    by_layer = lambda flat: mlp.layers(layout, head_first(flat))               # [B, H, o, i] each
    m = by_layer(own[deep.state])
    s = by_layer(own[form.transform.buffer]) if form.transform is not None else None
    snapshot = by_layer(own.get(f"{deep.state}.chunk_start", own[deep.state]))
    if not keep:            # written states are constants; `before write` reads see the start
        incoming_m, m = m, tuple(w.detach() for w in m)
        s = tuple(w.detach() for w in s) if s is not None else None
    start = values.new_state["_stream"]["t"]
    gates = (lr, decay, c, beta)
    checkpointed = keep and values.checkpoint
    if checkpointed and form.width is None:
        values.prepare(level, deep.loss)
    parts = []
    for t0, t1 in chunk_segments(start, values.x.shape[1], level.chunk):
        if (start + t0) % level.chunk == 0:
            snapshot = m if keep or t0 else incoming_m
        chunk = functools.partial(_chunk, values, level, form, layout, queries, gates, schulz,
                                  ext, past, t0, t1, width, keep)
        if checkpointed:
            (m, s), reads = checkpoint(chunk, m, s, snapshot, use_reentrant=False)
        else:
            (m, s), reads = chunk(m, s, snapshot)
        parts.append(reads)
    flat = (lambda ws: mlp.flatten(layout, ws)) if heads is not None else \
        (lambda ws: mlp.flatten(layout, ws).squeeze(1))
    own[deep.state] = flat(m)
    if s is not None:
        own[form.transform.buffer] = flat(s)
    own[f"{deep.state}.chunk_start"] = flat(snapshot)
    if width > 1:
        for name, value in ext.items():
            own[f"{name}.window"] = value[:, max(0, value.shape[1] - (width - 1)):]
    for name in queries:
        y = torch.cat([part[name] for part in parts], dim=2).transpose(1, 2)  # [B, T, H, d_L]
        values.bound[name] = y if heads is not None else y[:, :, 0]
    for name, expr in deep.reads.items():
        values.memo[name] = (values.evaluate(level, expr), values.frames[level.name])


def _extended(values, level: TokenLevel, form: ChainForm, own: dict):
    """(n, {context: [B, n + T, (H,) ...]}): the contexts a window sees, the n <= c - 1 kept
    from before the call (the ring buffer `name.window`, module/reference.py) then the call's,
    split into heads as the reference keeps them (module/unit.py)."""
    if form.width is None:
        return 0, {}
    frame, bsz, steps = values.frames[level.name], values.x.shape[0], values.x.shape[1]
    splits = {s.name: s for s in level.splits}
    ext, past = {}, 0
    for name in level.windowed:
        value = values.evaluate(level, ast.Name(id=name))          # memoised: computed once
        if name in splits:
            value = frame.split_as(value, splits[name].heads, splits[name].width)
        if not isinstance(value, torch.Tensor):            # a number: one per sequence
            value = values.x.new_full((bsz, steps) + (1,) * (level.heads is not None), value)
        before = own.get(f"{name}.window")
        past = before.shape[1] if before is not None else 0
        ext[name] = value if before is None else torch.cat([before, value], dim=1)
    return past, ext


def _chunk(values, level, form: ChainForm, layout: MLPLayout, queries: dict, gates, schulz,
           ext: dict, past: int, t0: int, t1: int, width: int, keep: bool, m, s, snapshot):
    """One chunk, the call's tokens [t0, t1) (the extended sequence's [e0, e1), after the
    `past` tokens kept from before the call), as a function of its start state, buffer and
    snapshot (by layer): ((the end state and buffer), the chunk's reads {name: [B, H, L, d_L]}).
    Under `checkpoint` the backward pass keeps only these arguments and calls it again."""
    e0, e1 = past + t0, past + t1
    w0 = max(0, e0 - (width - 1))                           # the first window token
    deltas, inputs = _factors(values, level, form, layout, snapshot, ext, w0, e1, t0, t1, keep)
    lr, decay, c, beta = (g[..., t0:t1] if g is not None else None for g in gates)
    steps = t1 - t0
    t = torch.arange(e0, e1, device=lr.device)
    j = torch.arange(w0, e1, device=lr.device)
    band = ((t[:, None] - j[None, :] >= 0) & (t[:, None] - j[None, :] < width)).to(lr.dtype)
    if beta is not None:
        pb = gate_products(beta)                                         # [B, H, L+1, L+1]
        q = (pb[..., 1:, 1:] * c.unsqueeze(-2)) @ band                         # [B, H, L, J]
        e = pb[..., 1:, 0]                                                     # [B, H, L]
    else:
        q, e = band.expand(lr.shape[:2] + band.shape), None
    pd = gate_products(decay)
    k = pd[..., 1:, 1:] * -lr.unsqueeze(-2)                                    # [B, H, L, L]
    a = pd[..., 1:, 0]                                                         # [B, H, L]
    states, new_s = [], []          # per layer: M_t as [B, H, L, o, i], or M_t^T when o > i
    for i, (delta, x) in enumerate(zip(deltas, inputs)):
        # a tall matrix is kept transposed: Newton-Schulz iterates on the wide orientation
        # (optim/kernels.py), which then needs no copy of a strided view
        tall = delta.shape[-1] > x.shape[-1]
        rows, cols = (x, delta) if tall else (delta, x)
        orient = (lambda w: w.mT) if tall else (lambda w: w)
        shape = delta.shape[:2] + (steps,) + rows.shape[-1:] + cols.shape[-1:]  # [B, H, L, r, c]
        terms = (rows.unsqueeze(-1) * cols.unsqueeze(-2)).flatten(-2)          # [B, H, J, r c]
        u = q @ terms                                                          # [B, H, L, r c]
        if e is not None:
            u = torch.addcmul(u, e.unsqueeze(-1), orient(s[i]).flatten(-2).unsqueeze(-2))
            new_s.append(orient(u[:, :, -1].view(shape[:2] + shape[3:])))
        u = u.view(shape)
        if schulz is not None:
            u = _newton_schulz(u, schulz)
        w = torch.addcmul(k @ u.flatten(-2), a.unsqueeze(-1),
                          orient(m[i]).flatten(-2).unsqueeze(-2))
        states.append((w.view(shape), tall))                                   # M_t (or M_t^T)
    reads = {name: _read(layout, states, snapshot, query[..., t0:t1, :], before)
             for name, (query, before) in queries.items()}
    end = tuple(w[:, :, -1].mT if tall else w[:, :, -1] for w, tall in states)
    return (end, tuple(new_s) if s is not None else None), reads


def _newton_schulz(u: torch.Tensor, schulz: dict) -> torch.Tensor:
    """NS_k of every matrix of u [B, H, L, r, c] (runtime/chain.py's, the reference's op order
    per matrix), in groups of about GROUP_BYTES: each of the 3 k products of a group then works
    in cache instead of streaming all B H L matrices through memory once per product (1.7x on
    this repository's CPU for 512 matrices of 64 x 256, float32: docs/performance.md). The groups
    are independent matrices, not tokens of the recurrence."""
    flat = u.flatten(0, 2)                                                     # [B H L, r, c]
    group = max(1, GROUP_BYTES // (flat[0].numel() * flat.element_size()))
    parts = [newton_schulz_state(part, None, schulz["steps"], schulz["polynomial"],
                                 schulz["eps"], schulz["precision"]) for part in flat.split(group)]
    return torch.cat(parts).view_as(u)


def _read(layout: MLPLayout, states, snapshot, u, before: bool):
    """M_t(u_t) for u [B, H, L, d_0] with the per-token states (by layer, [B, H, L, o, i], or
    [B, H, L, i, o] when `tall`); a `before write` read sees the snapshot for the whole chunk."""
    if before:
        return batched_forward(layout, snapshot, u)
    h = u
    for i, (w, tall) in enumerate(states):
        z = (h.unsqueeze(-2) @ w).squeeze(-2) if tall else \
            (w @ h.unsqueeze(-1)).squeeze(-1)                                 # [B, H, L, o]
        h = mlp.ACTIVATIONS[layout.activation](z) if i < len(states) - 1 else z
    return h + u if layout.residual else h


def _factors(values, level, form: ChainForm, layout: MLPLayout, snapshot, ext: dict,
             w0: int, e1: int, t0: int, t1: int, keep: bool):
    """delta_i [B, H, J, d_i] (gamma_j inside) and a_{i-1} [B, H, J, d_{i-1}] per layer, from one
    forward of gamma_j loss_j over the window tokens [w0, e1) of the extended sequence (the
    chunk's own tokens [t0, t1) of the call without a window) at `snapshot`, and one backward
    to the pre-activations (each term depends on its own pre-activations only)."""
    def loss_of(apply):
        if form.width is None:
            return values.evaluate_window(level, form.deep.loss, t0, t1, apply)  # [B, L, (H)]
        return _window_terms(values, level, form, ext, w0, e1, apply)           # [B, J, (H)]

    deltas, inputs = loss_factors(layout, snapshot, level.heads, keep, loss_of)
    if not keep:
        return [d.detach() for d in deltas], [a.detach() for a in inputs]
    return deltas, inputs


def _window_terms(values, level, form: ChainForm, ext: dict, w0: int, e1: int, apply):
    """gamma_j loss_j for the window tokens [w0, e1), in the frame whose second batch dim runs
    over them; names as the reference's window sees them (module/unit.py's `_window`)."""
    frame, program = Frame(2, level.heads), values.program

    def lookup(name: str):
        if name in ext:
            return ext[name][:, w0:e1]
        if name in program.hparams:
            return program.hparams[name]
        if name in values.params:
            return frame.lift(values.params[name])
        raise RuntimeError(f"window(...) names {name!r}, which the lowering should have "
                           "refused (lower/windows.py)")

    evaluator = FrameEvaluator(frame, lookup, apply, None, None)
    loss = evaluator(form.deep.loss)                                           # [B, J, (H)]
    if form.gamma is None:
        return loss
    gamma, loss = frame.align(evaluator(form.gamma), loss)
    return gamma * loss
