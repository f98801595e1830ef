"""Rule chains in the snapshot chunk form (lower/snapshot_forms.py): a write
`momentum(lr_m, beta) then ... then gd | dgd(...)` whose transforms are momentum or ema.

Inside a chunk of L tokens every gradient G_s is taken at the chunk-start state (NL eq. 90),
and a transform's buffer is linear in them (docs/language.md, Chains): per weight,

    m_t = beta_t m_{t-1} + c_t u_t   ->   m_t = B_t0 m_0 + sum_{s<=t} B_ts c_s u_s,
    B_ts = prod_{s<j<=t} beta_j      (momentum: c = lr_m; ema: c = 1 - beta)

so every token's direction u_t (the last buffer) is one [L, L] x [L, d_out d_in] product per
transform: no per-token recurrence. The applying rule W_t = d_t W_{t-1} - lr_t u_t ends at

    W_L = P_L0 W_0 - sum_t lr_t P_Lt u_t,        P_ts = prod_{s<j<=t} d_j,

and `dgd(precondition = true)` on the first layer follows eq. 88 on the previous token's weight,
W_t = W_{t-1} (d_t I - lr_t k_t k_t^T) - lr_t u_t = d_t W_{t-1} - lr_t (W_{t-1} k_t) k_t^T
- lr_t u_t: a token loop over the chunk (u_t is a full matrix, not a write along k_t, so the
WY form of snapshot_end.delta_end does not hold). With momentum on the gradient only, this is
nested_learning's `SelfModifyingTitans._apply_param_update` (buf <- beta buf + g;
W <- W (alpha I - eta k k^T) - eta buf).
"""
from __future__ import annotations

import torch

from nldsl.module.delta_chunk import decay_products


def chain_end(gates: tuple, transforms: list, factors: list, weights: tuple,
              buffers: dict, depth: int) -> tuple[tuple, dict]:
    """(the end weights, the end buffers by name) of one chained write over a chunk.
    gates: (lr [B, L], decay [B, L], key [B, L, d_0] or None); transforms: (step, c [B, L],
    beta [B, L]) in chain order; factors: per application, [(a_{i-1} [B, L, d_{i-1}],
    delta_i [B, L, d_i]) per layer] (G_{i,t} = sum_apps delta_{i,t} a_{i-1,t}^T), then with
    `layernorm` gamma's (LN(z_L) [B, L, d_L], delta [B, L, d_L]) (G_t = sum_apps delta_t o
    LN(z_L,t), elementwise); weights: W_{i,0} [B, d_i, d_{i-1}] per layer, then gamma
    [B, d_L]; depth: the number of layers; buffers: name -> per-part m_0."""
    lr, decay, key = gates
    ends, new = [], {step.buffer: [] for step, _, _ in transforms}
    for i, w in enumerate(weights):
        outer = (lambda a, delta: delta.unsqueeze(-1) * a.unsqueeze(-2)) if i < depth else \
            (lambda a, delta: delta * a)                                   # gamma's: elementwise
        u = sum(outer(a, delta) for a, delta in          # [B, L, o, i] (gamma's [B, L, d_L])
                (pairs[i] for pairs in factors))
        if not isinstance(u, torch.Tensor):             # no application reaches this layer
            u = w.new_zeros(w.shape[:1] + lr.shape[1:] + w.shape[1:])
        for step, c, beta in transforms:
            u = _buffered(buffers[step.buffer][i], c, beta, u)
            new[step.buffer].append(u[:, -1])
        if i == 0 and key is not None:
            ends.append(_preconditioned_end(w, lr, decay, key, u))
        else:
            ends.append(_gated_end(w, lr, decay, u))
    return tuple(ends), {name: tuple(parts) for name, parts in new.items()}


def _buffered(m0: torch.Tensor, c: torch.Tensor, beta: torch.Tensor, u: torch.Tensor):
    """Every token's buffer m_t = B_t0 m_0 + sum_{s<=t} B_ts c_s u_s: m0 [B, o, i], c and
    beta [B, L], u [B, L, o, i] -> [B, L, o, i] (gamma's: m0 [B, d_L], u [B, L, d_L])."""
    products, gamma = decay_products(beta)                                    # [B, L, L], [B, L]
    flat = (c.unsqueeze(-1) * u.flatten(2))                                   # [B, L, o i]
    m = torch.baddbmm(gamma.unsqueeze(-1) * m0.flatten(1).unsqueeze(1), products, flat)
    return m.view_as(u)


def _gated_end(w0: torch.Tensor, lr: torch.Tensor, decay: torch.Tensor, u: torch.Tensor):
    """W_L = P_L0 W_0 - sum_t lr_t P_Lt u_t: w0 [B, o, i], u [B, L, o, i] (or gamma's
    [B, d_L], [B, L, d_L])."""
    shifted = torch.cat([decay[:, 1:], torch.ones_like(decay[:, :1])], dim=1)
    suffix = shifted.flip(1).cumprod(1).flip(1)                               # P_Lt [B, L]
    total = suffix[:, 0] * decay[:, 0]                                        # P_L0 [B]
    step = torch.bmm((lr * suffix).unsqueeze(1), u.flatten(2)).view_as(w0)     # [B, o, i]
    return w0 * total.view((-1,) + (1,) * (w0.ndim - 1)) - step


def _preconditioned_end(w: torch.Tensor, lr: torch.Tensor, decay: torch.Tensor,
                        key: torch.Tensor, u: torch.Tensor):
    """eq. 88 token by token on the first layer: w [B, d_1, d_0], key [B, L, d_0]."""
    for t in range(lr.shape[1]):
        rate, k = lr[:, t, None, None], key[:, t].unsqueeze(-1)             # [B, 1, 1], [B, d_0, 1]
        w = decay[:, t, None, None] * w - rate * ((w @ k) @ k.mT) - rate * u[:, t]
    return w
