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

Products of decays are cumulative products, never ratios, so a decay of exactly 0 is exact.
Only the block-to-block pass is sequential. The block size is a schedule choice: any value
gives the same numbers as the token loop up to rounding.
"""
from __future__ import annotations

import torch


def decay_products(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a [.., L] -> D [.., L, L] with D[t, i] = prod_{i<j<=t} a_j (t >= i, else 0), and
    gamma [.., L] = prod_{j<=t} a_j."""
    length = a.shape[-1]
    lower = torch.ones(length, length, dtype=torch.bool, device=a.device).tril(-1)
    factors = torch.where(lower, a.unsqueeze(-1), torch.ones_like(a).unsqueeze(-1))  # [.., L, L]
    products = factors.cumprod(dim=-2)
    d = products * torch.ones(length, length, dtype=a.dtype, device=a.device).tril()
    return d, a.cumprod(dim=-1)


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
    blocks = lambda t: t.reshape(bsz, heads, n, block, *t.shape[3:])   # [B, H, n, L, ..]
    a, k, w = blocks(a), blocks(k), blocks(w)
    d, gamma = decay_products(a)                                  # [B, H, n, L, L], [.., L]
    gamma_prev = torch.cat([torch.ones_like(gamma[..., :1]), gamma[..., :-1]], dim=-1)
    d_prev = torch.cat([torch.zeros_like(d[..., :1, :]), d[..., :-1, :]], dim=-2)  # D[t-1, i]
    if c is None:
        u, v = w, None
    else:
        c = blocks(c)
        nmat = c.unsqueeze(-1) * d_prev * (k @ k.transpose(-1, -2))            # [.., L, L]
        eye = torch.eye(block, dtype=k.dtype, device=k.device)
        rhs = torch.cat([w, (c * gamma_prev).unsqueeze(-1) * k], dim=-1)       # [.., L, dv+dk]
        solved = torch.linalg.solve_triangular(eye + nmat, rhs, upper=False, unitriangular=True)
        u, v = solved[..., :dv], solved[..., dv:]                              # [.., L, dv], [.., L, dk]
    q_blocks = [(blocks(q), before) for q, before in queries]
    scores = [(q @ k.transpose(-1, -2)) * (d_prev if before else d) for q, before in q_blocks]
    outputs = [[] for _ in queries]
    state = s0
    last = d[..., -1, :].unsqueeze(-1) * k                                      # [.., L, dk]
    for j in range(n):
        delta = u[:, :, j] if v is None else u[:, :, j] - v[:, :, j] @ state   # [B, H, L, dv]
        for out, (q, before), score in zip(outputs, q_blocks, scores):
            g = (gamma_prev if before else gamma)[:, :, j].unsqueeze(-1)        # [B, H, L, 1]
            out.append(g * (q[:, :, j] @ state) + score[:, :, j] @ delta)     # [B, H, L, dv]
        state = gamma[:, :, j, -1, None, None] * state + last[:, :, j].transpose(-1, -2) @ delta
    ys = [torch.cat(out, dim=2)[:, :, :steps] for out in outputs]
    return ys, state


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
