"""The sums of a deep memory's chunk form (module/deep_chunk.py): the memory's batched forward,
the rule's coefficients over a chunk, the per-token reads and the chunk's end state.

With every gradient of a chunk of L tokens taken at its snapshot, token t's gradient of layer i
is the outer product delta_{i,t} a_{i-1,t}^T, G_t = sum_i delta_{i,t} a_{i-1,t}^T, and the rule
is linear in the G's:

    M_t = A_t M_0 + B_t S_0 + sum_{s<=t} K_ts G_s,    S_t = E_t S_0 + sum_{s<=t} F_ts G_s

with P^g_tr = prod_{r<i<=t} g_i (`gate_products`) for a gate g:
    gradient rule  M_t = d_t M_{t-1} - lr_t G_t:   A_t = P^d_t0, K_ts = -lr_s P^d_ts
    momentum rule  S_t = b_t S_{t-1} - lr_t G_t, M_t = d_t M_{t-1} + S_t (Titans eqs. 13-14):
                   F_ts = -lr_s P^b_ts, E_t = P^b_t0, K = P^d F, B_t = sum_r P^d_tr E_r
A read M_t(u_t) is computed layer by layer without forming M_t (`masked_read`):

    W_{i,t} h_t = A_t W_{i,0} h_t + B_t S_{i,0} h_t + sum_{s<=t} K_ts (a_{i-1,s} . h_t) delta_{i,s}

a causally masked [L, L] matmul per layer, as linear attention's intra-chunk part; the chunk's
end state is the same sums at t = L (`chunk_end`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nldsl.lower.program import MLPLayout
from nldsl.runtime import mlp


def batched_forward(layout: MLPLayout, weights, h, inputs=None, pre=None):
    """M(h) for h [..., L, d_0] and weights [..., d_out, d_in] per layer (then `layernorm`'s
    gamma [..., d_L]) on the same leading dims: one batched matmul per layer and head (never
    the weights broadcast over the tokens). With `inputs` and `pre`, each layer's input and
    pre-activation are recorded, the latter as a node autograd can differentiate to; with
    `layernorm`, then its normed output and the scaled output, gamma's (input, node) pair."""
    u, depth = h, len(layout.layers)
    for i, w in enumerate(weights[:depth]):
        if inputs is not None:
            inputs.append(h)
        z = _linear(h, w)                                                  # [..., L, d_out]
        if pre is not None:
            if not z.requires_grad:
                z.requires_grad_()
            pre.append(z)
        h = mlp.ACTIVATIONS[layout.activation](z) if i < depth - 1 else z
    if layout.norm:
        normed = F.layer_norm(h, h.shape[-1:], eps=mlp.LAYERNORM_EPS)
        h = normed * (weights[-1].unsqueeze(-2) + 1)                       # [..., L, d_L]
        if inputs is not None:
            inputs.append(normed)
        if pre is not None:
            pre.append(h)
    return h + u if layout.residual else h


def _linear(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """h w^T on the same leading dims: one bmm over them (what matmul calls, without its expand,
    reshape and, for a transposed operand, copy around it: fewer ops and autograd nodes per
    layer, in the forward and in every backward through it)."""
    lead = h.shape[:-2]
    if h.ndim >= 3 and lead == w.shape[:-2]:
        z = torch.bmm(h.reshape(-1, *h.shape[-2:]), w.reshape(-1, *w.shape[-2:]).mT)
        return z.view(*lead, *z.shape[-2:]) if h.ndim > 3 else z
    return h @ w.mT


def gate_products(g: torch.Tensor) -> torch.Tensor:
    """g [..., L] -> P [..., L+1, L+1], P[t, r] = prod_{r < i <= t} g_i for t >= r (index 0:
    the chunk's start), 0 above the diagonal. A cumulative product of a masked matrix: exact
    for gates that are 0, unlike differences of cumulative log sums."""
    n = g.shape[-1] + 1
    gi = torch.cat([g.new_ones(g.shape[:-1] + (1,)), g], dim=-1)           # [B, H, L+1]
    index = torch.arange(n, device=g.device)
    after = index[None, :] > index[:, None]                                # [r, i]: i > r
    q = torch.where(after, gi.unsqueeze(-2), torch.ones_like(gi).unsqueeze(-2)).cumprod(-1)
    return q.transpose(-1, -2).tril()                                      # [B, H, t, r]


def chunk_coefficients(lr, decay, beta):
    """(A, B, K, E, F) of the module docstring for every chunk at once; B, E, F are None for
    the gradient rule. Gates [B, H, N, L] -> A, B, E [B, H, N, L]; K, F [B, H, N, L, L]."""
    pd = gate_products(decay)                                                  # [B, H, L+1, L+1]
    if beta is None:
        return pd[..., 1:, 0], None, pd[..., 1:, 1:] * -lr.unsqueeze(-2), None, None
    pb = gate_products(beta)
    f = pb[..., 1:, 1:] * -lr.unsqueeze(-2)                                # [B, H, L, L]
    e = pb[..., 1:, 0]                                                     # [B, H, L]
    k = pd[..., 1:, 1:] @ f
    b = (pd[..., 1:, 1:] @ e.unsqueeze(-1)).squeeze(-1)
    return pd[..., 1:, 0], b, k, e, f


def chunked_coefficients(lr, decay, beta, segments, width: int):
    """`chunk_coefficients` of the gates [B, H, T] cut into the call's chunks of `width`."""
    by_chunk = lambda g, fill: gates_by_chunk(g, segments, width, fill) if g is not None else None
    return chunk_coefficients(by_chunk(lr, 0.0), by_chunk(decay, 1.0), by_chunk(beta, 1.0))


def gates_by_chunk(g: torch.Tensor, segments, chunk: int, fill: float) -> torch.Tensor:
    """A gate [B, H, T] as [B, H, N, C], each chunk padded at its end with `fill` (lr 0, decay
    and beta 1: padded tokens never reach a real token, the causal masks see to it)."""
    return torch.stack([pad_to(g[..., t0:t1], -1, chunk, fill) for t0, t1 in segments], dim=2)


def pad_to(a: torch.Tensor, dim: int, size: int, fill: float = 0.0) -> torch.Tensor:
    """a padded with `fill` at the end of `dim` (a negative dim) to `size`."""
    missing = size - a.shape[dim]
    return torch.nn.functional.pad(a, (0, 0) * (-dim - 1) + (0, missing), value=fill) \
        if missing else a


def masked_read(layout: MLPLayout, m, s, coefficients, deltas, inputs, u, scale=None):
    """M_t(u_t) for the chunks' tokens: u [..., L, d_0] -> [..., L, d_L], with m, s (by layer),
    the coefficients and the factors of each chunk on the same leading dims:
    W_{i,t} h = A_t W_{i,0} h + B_t S_{i,0} h + sum_s K_ts (a_{i-1,s} . h) delta_{i,s}.
    `scale(i, z)` maps layer i's W_{i,t} h before its activation (a derived memory's per-token
    normaliser, derived_chunk.py)."""
    a, b, k, _, _ = coefficients
    h = u
    for i, (w, delta, x) in enumerate(zip(m, deltas, inputs)):
        z = a.unsqueeze(-1) * (h @ w.mT)                                   # [..., L, o]
        if b is not None:
            z = z + b.unsqueeze(-1) * (h @ s[i].mT)
        z = z + ((h @ x.mT) * k) @ delta                                   # [L, L] @ [L, o]
        z = scale(i, z) if scale is not None else z
        h = mlp.ACTIVATIONS[layout.activation](z) if i < len(layout.layers) - 1 else z
    return h + u if layout.residual else h


def chunk_end(m, s, rows, deltas, inputs, slots=None):
    """The state and momentum after the chunk's last token (by layer): the sums at t = L, from
    the coefficients' last rows (`last_row`); written into `slots` (`chunk_slots`, without
    autograd) when given."""
    a, b, k, e, f = rows                        # A, B, E [B, H, 1, 1]; K, F [B, H, L, 1]
    new_m, new_s = [], []
    out_m, out_s = slots if slots is not None else ([None] * len(m), [None] * len(m))
    for i, (delta, x) in enumerate(zip(deltas, inputs)):
        # addcmul: one pass over the weights per term (the first into a fresh [B, H, o, i])
        w = torch.addcmul(_linear((delta * k).mT, x.mT), a, m[i], out=out_m[i])
        if s is not None:
            w.addcmul_(b, s[i])                                            # [B, H, o, i]
            new_s.append(torch.addcmul(_linear((delta * f).mT, x.mT), e, s[i], out=out_s[i]))
        new_m.append(w)
    return tuple(new_m), tuple(new_s) if s is not None else None


def start_stacks(m, s, chunks: int):
    """Without autograd: each layer's state (and momentum) at every chunk start, on a chunk
    axis [B, H, N, o, i], the first filled with `m` (`s`); `chunk_end` writes the others in
    place, so the batched reads (`_reads`) need no stack of N states per layer."""
    def stack(ws):
        out = [w.new_empty(w.shape[:2] + (chunks,) + w.shape[2:]) for w in ws]
        for o, w in zip(out, ws):
            o[:, :, 0].copy_(w)
        return out
    return stack(m), stack(s) if s is not None else None


def chunk_slots(stacked, n: int):
    """Chunk n's start states (and momenta) in `start_stacks`' tensors: views [B, H, o, i]."""
    m, s = stacked
    return [w[:, :, n] for w in m], [w[:, :, n] for w in s] if s is not None else [None] * len(m)


def last_row(coefficients, n: int, length: int):
    """Chunk n's coefficients at its last real token, as `chunk_end` takes them: A, B, E
    [B, H, 1, 1]; K, F [B, H, L, 1]."""
    a, b, k, e, f = coefficients
    row = lambda c: c[:, :, n, length - 1, None, None] if c is not None else None
    cols = lambda c: c[:, :, n, length - 1, :length, None] if c is not None else None
    return row(a), row(b), cols(k), row(e), cols(f)


def last_rows(coefficients, segments) -> list:
    """`last_row` of every chunk of `segments`, gathered for all chunks at once (a handful of
    ops per call instead of per chunk)."""
    chunks, lengths = len(segments), [t1 - t0 for t0, t1 in segments]
    some = next(c for c in coefficients if c is not None)
    index = (torch.arange(chunks, device=some.device),
             torch.tensor(lengths, device=some.device) - 1)

    def rows(c, matrix: bool):
        if c is None:
            return [None] * chunks
        r = c[:, :, index[0], index[1]]                                     # [B, H, N(, L)]
        r = r.unsqueeze(-1) if matrix else r[..., None, None]
        return [row[:, :, :length] if matrix and length < row.shape[2] else row
                for row, length in zip(r.unbind(2), lengths)]
    a, b, k, e, f = coefficients
    return list(zip(rows(a, False), rows(b, False), rows(k, True), rows(e, False),
                    rows(f, True)))
