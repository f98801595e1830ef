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
(the UT transform, one triangular solve per block, all blocks at once):

    Delta = U - V S_0,          U = T W,   V = T (c gamma' K)
    Y     = gamma Q S_0 + ((Q K^T) o D) Delta           (plain reads: S_t^T q_t)
    Y'    = gamma' Q S_0 + ((Q K^T) o D_prev) Delta     (`before write`: S_{t-1}^T q_t)
    S_end = gamma_L S_0 + (D[L-1, :] K)^T Delta

Everything that does not involve S_0 is computed for all blocks at once; what does is
regrouped so that the block-to-block pass is one product per block:

    S_end = C S_0 + A,     C = gamma_L I - E^T V,   A = E^T U,   E = D[L-1, :] o K
    Y     = P S_0 + R,     P = gamma o Q - ((Q K^T) o D) V,     R = ((Q K^T) o D) U

(Y' likewise with gamma', D_prev). The pass S_0 -> S_end runs block by block (one batched
product each); then every block's Y is one batched product with the stacked block-start states.
Products of decays are cumulative products, never ratios, so a decay of exactly 0 is exact.
The block size is a schedule choice: any value gives the same numbers as the token loop up to
rounding. Layout: every block of every (batch, head) is one batch entry [G = B H n, L, ..]; the
triangular solve is handed to LAPACK in the column-major layout it wants (no copies) and has a
backward of one more solve and one product (`_unit_lower_solve`).
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


def decay_products(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a [.., L] -> D [.., L, L] with D[t, i] = prod_{i<j<=t} a_j (t >= i, else 0), and
    gamma [.., L] = prod_{j<=t} a_j."""
    length = a.shape[-1]
    ones = torch.ones(length, length, dtype=a.dtype, device=a.device)
    if not a.requires_grad and bool((a == 1).all()):              # no decay: exact shortcut
        return ones.tril().expand(*a.shape, length), torch.ones_like(a)
    lower = ones.tril(-1).bool()
    factors = torch.where(lower, a.unsqueeze(-1), 1.0)           # [.., L, L]: a_t below the diagonal
    return factors.cumprod(dim=-2).tril(), a.cumprod(dim=-1)


class _UnitLowerSolve(torch.autograd.Function):
    """X = (I + N)^{-1} R for strictly lower N [G, L, L], R [G, L, m]. Backward (Z = A^{-T} G):
    dR = Z, dN = -tril_{-1}(Z X^T)."""

    @staticmethod
    def forward(ctx, n, r):
        a = n + torch.eye(n.shape[-1], dtype=n.dtype, device=n.device)
        # X^T A^T = R^T: A^T and R^T are column-major views, as LAPACK's trsm wants them.
        x = torch.linalg.solve_triangular(a.mT, r.mT, upper=True, left=False, unitriangular=True).mT
        ctx.save_for_backward(a, x)
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        a, x = ctx.saved_tensors
        z = torch.linalg.solve_triangular(a, grad.mT, upper=False, left=False, unitriangular=True).mT
        return torch.bmm(z, x.mT).neg_().tril_(-1), z


def linear_delta_blocks(s0, a, c, k, w, queries, block: int):
    """Run (1) over a sequence in blocks.

    s0 [B, H, dk, dv]; a, c [B, H, T] (c None: no erase term); k [B, H, T, dk];
    w [B, H, T, dv]; queries: list of (q [B, H, T, dk], before_write).
    Returns ([y [B, H, T, dv] per query], S_T [B, H, dk, dv])."""
    bsz, heads, steps, dk = k.shape
    dv = w.shape[-1]
    n = -(-steps // block)
    pad = n * block - steps
    if pad:
        a = torch.nn.functional.pad(a, (0, pad), value=1.0)      # a = 1, k = 0: no change
        c = torch.nn.functional.pad(c, (0, pad)) if c is not None else None
        k = torch.nn.functional.pad(k, (0, 0, 0, pad))
        w = torch.nn.functional.pad(w, (0, 0, 0, pad))
        queries = [(torch.nn.functional.pad(q, (0, 0, 0, pad)), b) for q, b in queries]
    g = bsz * heads * n
    blocks = lambda t: t.reshape(g, block, *t.shape[3:])          # [G, L, ..], G = B H n
    a, k, w = a.reshape(g, block), blocks(k), blocks(w)
    d, gamma = decay_products(a)                                  # [G, L, L], [G, L]
    gamma_prev = torch.cat([torch.ones_like(gamma[:, :1]), gamma[:, :-1]], dim=-1)
    d_prev = torch.cat([torch.zeros_like(d[:, :1]), d[:, :-1]], dim=-2)   # D[t-1, i]
    kt = k.mT                                                     # [G, dk, L]
    edge = (d[:, -1, :].unsqueeze(-1) * k).mT                     # E^T [G, dk, L]
    decay_end = gamma[:, -1]                                      # gamma_L [G]
    if c is None:
        u, v = w, None
    else:
        c = c.reshape(g, block)
        nmat = (c.unsqueeze(-1) * d_prev) * torch.bmm(k, kt)                  # [G, L, L]
        rhs = torch.cat([w, (c * gamma_prev).unsqueeze(-1) * k], dim=-1)      # [G, L, dv+dk]
        solved = _UnitLowerSolve.apply(nmat, rhs)
        u, v = solved[..., :dv], solved[..., dv:]                             # [G, L, dv], [G, L, dk]
    # block-to-block pass: S_{j+1} = C_j S_j + A_j over the n blocks of each (batch, head)
    per_seq = lambda t: t.reshape(bsz * heads, n, *t.shape[1:])
    grow = per_seq(torch.bmm(edge, u))                                         # A [BH, n, dk, dv]
    if v is not None:
        carry = per_seq(torch.baddbmm(torch.diag_embed(decay_end.unsqueeze(-1).expand(g, dk)),
                                      edge, v, alpha=-1))                      # C [BH, n, dk, dk]
    else:
        scale = per_seq(decay_end)[..., None, None]                            # [BH, n, 1, 1]
    state = s0.reshape(bsz * heads, dk, dv)
    starts = []
    for j in range(n):
        starts.append(state)
        state = (torch.baddbmm(grow[:, j], carry[:, j], state) if v is not None
                 else torch.addcmul(grow[:, j], scale[:, j], state))
    start = torch.stack(starts, dim=1).reshape(g, dk, dv)                      # S_0 of each block
    ys = []
    for q, before in queries:
        q = blocks(q)
        score = torch.bmm(q, kt) * (d_prev if before else d)                   # [G, L, L]
        p = (gamma_prev if before else gamma).unsqueeze(-1) * q                # [G, L, dk]
        if v is not None:
            p = torch.baddbmm(p, score, v, alpha=-1)
        y = torch.baddbmm(torch.bmm(score, u), p, start)                       # P S_0 + R
        ys.append(y.reshape(bsz, heads, n * block, dv)[:, :, :steps])
    return ys, state.reshape(bsz, heads, dk, dv)


def linear_delta_loop(s0, a, c, k, w, queries):
    """(1) token by token, for tests and benchmarks: the same shapes as linear_delta_blocks."""
    state, outs = s0, [[] for _ in queries]
    for t in range(k.shape[2]):
        kt, wt = k[:, :, t], w[:, :, t]                                         # [B, H, dk], [B, H, dv]
        previous = state
        erase = 0 if c is None else c[:, :, t, None, None] * kt.unsqueeze(-1) * (
            kt.unsqueeze(-2) @ state)
        state = a[:, :, t, None, None] * state - erase + kt.unsqueeze(-1) * wt.unsqueeze(-2)
        for out, (q, before) in zip(outs, queries):
            seen = previous if before else state
            out.append((q[:, :, t].unsqueeze(-2) @ seen).squeeze(-2))
    return [torch.stack(o, dim=2) for o in outs], state
