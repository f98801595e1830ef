"""The linear-memory recurrence in blocks: exact, chunk-parallel (the WY/UT form of Yang et al.
2024, "Parallelizing Linear Transformers with the Delta Rule over Sequence Length", with a
per-token decay as in Gated DeltaNet).

In the key-major layout S = M^T [d_k, d_v] (so that y_t = S_t^T q_t), per head:

    S_t = a_t S_{t-1} - c_t k_t (k_t^T S_{t-1}) + k_t w_t^T                       (1)

Write the change of token t as k_t delta_t^T, delta_t = w_t - c_t S_{t-1}^T k_t, and let
D[t, i] = a_{i+1} ... a_t (1 when t = i), gamma_t = D[t, -1] (the block's decay up to t) and
gamma'_t = gamma_{t-1}. Inside a block that starts from S_0, unrolling (1) gives

    delta_t + sum_{i<t} c_t D[t-1, i] (k_t . k_i) delta_i = w_t - c_t gamma'_t S_0^T k_t

a unit lower-triangular system (I + N) Delta = W - (c gamma' K) S_0. With T = (I + N)^{-1}
(the UT transform):

    Delta = U - V S_0,          U = T W,   V = T (c gamma' K)
    Y     = gamma Q S_0 + ((Q K^T) o D) Delta           (plain reads: S_t^T q_t)
    Y'    = gamma' Q S_0 + ((Q K^T) o D_prev) Delta     (`before write`: S_{t-1}^T q_t)
    S_end = gamma_L S_0 + E^T Delta,   E = D[L-1, :] o K

Everything that does not involve S_0 (K K^T, T, U, V, E) is computed for all blocks at once.
The block-to-block pass is two small products per block (Delta, then S_end), over the B H
sequences at once; then every block's Y is two batched products (Q with the stacked block-start
states, the masked scores with the stacked Deltas). This is flash-linear-attention's order of
work: with L = d_k = d_v it is eight products of L d^2 multiply-adds per block besides T
(K K^T, U, V, Delta, S_end, the scores, their product with Delta, Q S_0), one fewer than
precomputing S_end = C S_0 + A and Y = P S_0 + R for every block.

T is computed with batched products, not by LAPACK's triangular solve, which runs one small
matrix at a time at a fraction of GEMM speed (`_UnitLowerInverse`: diagonal sub-blocks by a row
sweep, then merged pairwise, TRTRI's recursion; its backward is two products). U and V are one
product with [W, c gamma' K] side by side; from L = HALVES on, by halves of the block
(`unit_lower_solve`), which never forms T's largest merge. Without autograd the block-to-block
pass writes into preallocated results.
Products of decays are cumulative products, never ratios, so a decay of exactly 0 is exact;
`a=None` means no decay at all (DeltaNet, linear attention) and skips the decay products.
The block size is a schedule choice: any value gives the same numbers as the token loop up to
rounding. Layout: every block of every (batch, head) is one batch entry [G = n B H, L, ..],
block-major, so that one block of all sequences is a contiguous slice.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

#: the row sweep inverts diagonal sub-blocks of this size; pairs are merged up to the block.
SWEEP = 8
#: blocks from this size on are solved by halves (at 32 the halves' copies cost more than the
#: merge they save: 1 thread, deltanet_recurrence's kernel).
HALVES = 64


def decay_products(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a [.., L] -> D [.., L, L] with D[t, i] = prod_{i<j<=t} a_j (t >= i, else 0), and
    gamma [.., L] = prod_{j<=t} a_j."""
    length = a.shape[-1]
    lower = torch.ones(length, length, dtype=torch.bool, device=a.device).tril(-1)
    factors = torch.where(lower, a.unsqueeze(-1), 1.0)           # [.., L, L]: a_t below the diagonal
    return factors.cumprod(dim=-2).tril(), a.cumprod(dim=-1)


def unit_lower_solve(n: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """X = (I + N)^{-1} R for strictly lower N [G, L, L], R [G, L, m], differentiable. For an
    even L >= HALVES, one step of block forward substitution over the halves,
    N = [[N1, 0], [C, N2]]: X1 = T1 R1, X2 = T2 (R2 - C X1), with T1 and T2 inverted in one
    batch: 3/4 of the multiply-adds of T R, and T's last (largest) merge is never formed."""
    length = n.shape[1]
    if length % 2 or length < HALVES:
        return torch.bmm(unit_lower_inverse(n), r)
    half = length // 2
    (n1, _), (c, n2) = (rows.split(half, dim=2) for rows in n.split(half, dim=1))
    t1, t2 = unit_lower_inverse(torch.cat((n1, n2))).chunk(2)             # [G, L/2, L/2] each
    r1, r2 = r.split(half, dim=1)
    x1 = torch.bmm(t1, r1)                                                 # [G, L/2, m]
    return torch.cat((x1, torch.bmm(t2, torch.baddbmm(r2, c, x1, alpha=-1))), dim=1)


def unit_lower_inverse(n: torch.Tensor) -> torch.Tensor:
    """(I + N)^{-1} for strictly lower N [G, L, L], differentiable (dN = -tril_{-1}(T^T dT T^T))."""
    return _UnitLowerInverse.apply(n)


class _UnitLowerInverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, n):
        t = _invert(n)
        ctx.save_for_backward(t)
        return t

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (t,) = ctx.saved_tensors
        return torch.bmm(t.mT, torch.bmm(grad, t.mT)).neg_().tril_(-1)


def _invert(n: torch.Tensor) -> torch.Tensor:
    """TRTRI's recursion, batched. With N padded to a power of two P (zeros: the inverse is
    block-diagonal with I), the SWEEP-sized diagonal blocks are inverted row by row
    (T[i, :i] = -N[i, :i] T[:i, :i]); then pairs of inverted blocks A, D of size s with the
    block C of N between them merge into [[A, 0], [-D C A, D]] of size 2 s. The blocks of a
    size are one contiguous [G P / s, s, s] tensor, so that A and D are strided batches that
    the products read in place."""
    g, length = n.shape[:2]
    size = 1 << max(length - 1, 0).bit_length()                  # P >= L, a power of two
    n = F.pad(n, (0, size - length, 0, size - length)) if size != length else n
    s = min(size, SWEEP)
    diag = _sub_blocks(n, s, 0)                                   # [G P/s, s, s]
    t = torch.eye(s, dtype=n.dtype, device=n.device).repeat(diag.shape[0], 1, 1)
    for i in range(1, s):                                         # row i from rows < i
        t[:, i, :i] -= torch.bmm(diag[:, i:i + 1, :i], t[:, :i, :i]).squeeze(1)
    while s < size:
        pairs = t.view(-1, 2, s, s)                               # [G P/2s, 2, s, s]: A, D
        a, d = pairs[:, 0], pairs[:, 1]
        merged = t.new_zeros(pairs.shape[0], 2, s, 2, s)
        merged[:, 0, :, 0] = a
        merged[:, 1, :, 1] = d
        merged[:, 1, :, 0] = torch.bmm(d, torch.bmm(_sub_blocks(n, s, 1), a)).neg_()
        t, s = merged.view(-1, 2 * s, 2 * s), 2 * s
    t = t.view(g, size, size)
    return t[:, :length, :length] if size != length else t


def _sub_blocks(n: torch.Tensor, s: int, below: int) -> torch.Tensor:
    """The s-blocks of N [G, P, P] on the diagonal (below 0: blocks (i, i)) or just below the
    diagonal of each 2s-block (below 1: blocks (2j + 1, 2j)), as [G P / s / (1 + below), s, s]."""
    g, size = n.shape[:2]
    m = size // s
    blocks = n.view(g, m, s, m, s).diagonal(offset=-below, dim1=1, dim2=3)  # [G, s, s, m - below]
    blocks = blocks[..., ::2] if below else blocks
    return blocks.permute(0, 3, 1, 2).reshape(-1, s, s)


def linear_delta_blocks(s0, a, c, k, w, queries, block: int):
    """Run (1) over a sequence in blocks.

    s0 [B, H, dk, dv]; a, c [B, H, T] (a None: no decay, a = 1; c None: no erase term);
    k [B, H, T, dk]; w [B, H, T, dv]; queries: list of (q [B, H, T, dk], before_write).
    Returns ([y [B, H, T, dv] per query], S_T [B, H, dk, dv])."""
    bsz, heads, steps, dk = k.shape
    dv = w.shape[-1]
    n = -(-steps // block)
    pad = n * block - steps
    if pad:
        a = F.pad(a, (0, pad), value=1.0) if a is not None else None   # a = 1, k = 0: no change
        c = F.pad(c, (0, pad)) if c is not None else None
        k, w = F.pad(k, (0, 0, 0, pad)), F.pad(w, (0, 0, 0, pad))
        queries = [(F.pad(q, (0, 0, 0, pad)), b) for q, b in queries]
    bh, g = bsz * heads, n * bsz * heads
    split = lambda t: t.reshape(bsz, heads, n, block, *t.shape[3:]).movedim(2, 0)  # a view
    blocks = lambda t: split(t).reshape(g, block, *t.shape[3:])           # [G, L, ..], one copy
    k = blocks(k)
    kt = k.mT                                                              # [G, dk, L]
    if a is None:
        d = None
        edge = kt                                                          # E^T [G, dk, L]
    else:
        d, gamma = decay_products(blocks(a))                               # [G, L, L], [G, L]
        gamma_prev = F.pad(gamma[:, :-1], (1, 0), value=1.0)
        d_prev = F.pad(d[:, :-1], (0, 0, 1, 0))                           # D[t-1, i]
        edge = (d[:, -1, :].unsqueeze(-1) * k).mT
        decay_end = gamma[:, -1].reshape(n, bh, 1, 1)                      # gamma_L
    if c is None:
        u, v = blocks(w), None
    else:
        c = blocks(c)                                                      # [G, L]
        kk = torch.bmm(k, kt)                                              # [G, L, L]
        if d is None:
            nmat, scaled = kk.tril_(-1) * c.unsqueeze(-1), c.unsqueeze(-1) * k
        else:
            nmat, scaled = kk * (c.unsqueeze(-1) * d_prev), (c * gamma_prev).unsqueeze(-1) * k
        rhs = torch.cat((split(w), scaled.view(n, bsz, heads, block, dk)), dim=-1)  # W, c gamma' K
        u, v = unit_lower_solve(nmat, rhs.view(g, block, dv + dk)).split((dv, dk), dim=-1)  # U, V
    # block-to-block pass over the n blocks, all B H sequences at once
    per_block = lambda t: t.reshape(n, bh, *t.shape[1:]).unbind(0)
    decays = decay_end.unbind(0) if d is not None else [None] * n
    pass_ = _block_pass if torch.is_grad_enabled() else _block_pass_in_place
    starts, deltas, state = pass_(s0.reshape(bh, dk, dv), per_block(u),
                                  per_block(v) if v is not None else [None] * n,
                                  per_block(edge), decays)
    start = starts.reshape(g, dk, dv)                                      # S_0 of each block
    delta = deltas.reshape(g, block, dv)
    ys = []
    for q, before in queries:
        q = blocks(q)
        score = torch.bmm(q, kt)                                           # [G, L, L]
        if d is None:
            score = score.tril_(-1 if before else 0)
        else:
            score = score * (d_prev if before else d)
            q = (gamma_prev if before else gamma).unsqueeze(-1) * q
        y = torch.baddbmm(torch.bmm(score, delta), q, start)              # [G, L, dv]
        y = y.reshape(n, bsz, heads, block, dv).permute(1, 0, 3, 2, 4)     # [B, n, L, H, dv]
        ys.append(y.reshape(bsz, n * block, heads, dv)[:, :steps].transpose(1, 2))
    return ys, state.reshape(bsz, heads, dk, dv)


def _block_pass(state, us, vs, edges, decays):
    """Delta_j = U_j - V_j S_j, S_{j+1} = gamma_L S_j + E_j^T Delta_j over the blocks j, each
    argument one [BH, ..] tensor per block (vs, decays: None for no erase term, no decay).
    Returns the block-start states [n, BH, dk, dv], the Deltas [n, BH, L, dv] and S_n."""
    starts, deltas = [], []
    for u, v, edge, decay in zip(us, vs, edges, decays):
        starts.append(state)
        delta = u if v is None else torch.baddbmm(u, v, state, alpha=-1)          # [BH, L, dv]
        deltas.append(delta)
        state = torch.baddbmm(state if decay is None else decay * state, edge, delta)
    return torch.stack(starts), torch.stack(deltas), state


def _block_pass_in_place(state, us, vs, edges, decays):
    """_block_pass without autograd: the products write into the stacked results (no copies)."""
    n = len(us)
    starts = state.new_empty(n, *state.shape)                            # S_0 .. S_{n-1}
    deltas = us[0].new_empty(n, *us[0].shape)
    starts[0] = state
    for j, (u, v, edge, decay) in enumerate(zip(us, vs, edges, decays)):
        if v is None:
            deltas[j] = u
        else:
            torch.baddbmm(u, v, state, alpha=-1, out=deltas[j])
        kept = state if decay is None else decay * state
        state = torch.baddbmm(kept, edge, deltas[j], out=starts[j + 1] if j + 1 < n else None)
    return starts, deltas, state


def linear_delta_loop(s0, a, c, k, w, queries):
    """(1) token by token, for tests and benchmarks: the same shapes as linear_delta_blocks."""
    state, outs = s0, [[] for _ in queries]
    for t in range(k.shape[2]):
        kt, wt = k[:, :, t], w[:, :, t]                                         # [B, H, dk], [B, H, dv]
        previous = state
        erase = 0 if c is None else c[:, :, t, None, None] * kt.unsqueeze(-1) * (
            kt.unsqueeze(-2) @ state)
        kept = state if a is None else a[:, :, t, None, None] * state
        state = kept - erase + kt.unsqueeze(-1) * wt.unsqueeze(-2)
        for out, (q, before) in zip(outs, queries):
            seen = previous if before else state
            out.append((q[:, :, t].unsqueeze(-2) @ seen).squeeze(-2))
    return [torch.stack(o, dim=2) for o in outs], state
