"""The snapshot chunk form's end states (module/snapshot_chunk.py): every state after a chunk's
last token from the chunk's gates and gradient factors.

A gradient write M_t = d_t M_{t-1} - lr_t G_t ends at a scalar-gated sum per weight,
W_L = P_L0 W_0 - sum_s lr_s P_Ls G_s (P_ts = prod_{s<j<=t} d_j), G_s = sum_apps delta_s a_s^T:
one matmul over all applications' factors, accumulated in place into the gated start
(`layernorm`'s gamma, whose token gradient is elementwise, G_s = sum_apps delta_s o LN(z_L,s)
from the pair batched_forward records, one weighted sum over the tokens). With
`dgd(precondition = true)` the first layer follows NL eq. 88 on the previous token's weight,
W_t = W_{t-1} (d_t I - lr_t k_t k_t^T) - lr_t sum_apps delta_{1,t} a_{0,t}^T: per token 1 + A
steps of the gated delta rule (k_t, decay d_t, erase lr_t, write 0), then per application not
on the key (a_0, decay 1, erase 0, write -lr_t delta_1), in the WY/UT form (delta_end). The
first layers of all states of one shape and step count are one call, one state per head, and
stay stacked from chunk to chunk (no copy of the weights per chunk). Chained writes end in
module/snapshot_chain.py.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from nldsl.lower.program import TokenLevel
from nldsl.lower.snapshot_forms import SnapshotForm
from nldsl.module.delta_chunk import decay_products, unit_lower_solve
from nldsl.module.snapshot_chain import chain_end


class Application(NamedTuple):
    """One application M(u) that a state's loss reaches: its layers' factors, whether u is
    the write's key, and its first layer's pre-activation u W_1^T at the chunk-start weights."""
    pairs: list            # [(a_{i-1} [B, L, d_{i-1}], delta_i [B, L, d_i]) per layer]
    on_key: bool
    pre: torch.Tensor      # [B, L, d_1]


def end_states(level: TokenLevel, form: SnapshotForm, gates: dict, factors: dict,
               transforms: dict, states: dict, buffers: dict, stacks: dict, at_start: bool):
    """Every state and chain buffer after the chunk's last token (module docstring): factors
    are the Applications of each state; `stacks` holds the delta-rule groups' stacked first
    layers between chunks (_first_layers); `at_start`: `states` are the chunk-start states the
    applications were made at (the chunk is not the rest of one cut by the previous call)."""
    new, new_buffers, shared = {}, {}, {}
    for write in form.writes:
        if write.chain:
            new[write.target], ends = chain_end(
                gates[write.target], transforms[write.target],
                [app.pairs for app in factors[write.target]], states[write.target], buffers,
                len(level.states[write.target].mlp.layers))
            new_buffers.update(ends)
            continue
        lr, decay, key = gates[write.target]
        weights, depth = states[write.target], len(level.states[write.target].mlp.layers)
        if (id(lr), id(decay)) not in shared:          # writes sharing their gates share these
            shared[id(lr), id(decay)] = _gate_sums(lr, decay)
        scale, total = shared[id(lr), id(decay)]
        ends = []
        for i, w in enumerate(weights):
            if i == 0 and key is not None:
                ends.append(None)                                             # the delta rule
                continue
            apps = [app.pairs[i] for app in factors[write.target]]           # one matmul for all
            a = _joined([a for a, _ in apps])                                 # [B, A L, d_in]
            scaled = _joined([d * scale for _, d in apps])                    # [B, A L, d_out]
            if i == depth:                       # layernorm's gamma: G_s = delta_s o LN(z_L,s)
                ends.append(w * total[:, 0] + (scaled * a).sum(1))            # [B, d_L]
            else:
                ends.append(_accumulate(w * total, scaled.mT, a))             # [B, o, i]
        new[write.target] = ends
    preconditioned = [w for w in form.writes if w.precondition is not None and not w.chain]
    for group in _groups(level, preconditioned, factors):
        ends = _first_layers(group, gates, factors, states, stacks, at_start)
        for write, end in zip(group, ends):
            new[write.target][0] = end
    return {name: tuple(ws) for name, ws in new.items()}, new_buffers


def _groups(level: TokenLevel, writes, factors) -> list[list]:
    """The preconditioned writes by their first layer's shape and steps per token (1 + the
    applications whose input is not the key): one delta-rule call each, none padded."""
    groups: dict[tuple, list] = {}
    for write in writes:
        steps = 1 + sum(not app.on_key for app in factors[write.target])
        groups.setdefault((level.states[write.target].mlp.layers[0], steps), []).append(write)
    return list(groups.values())


def _first_layers(group, gates, factors, states, stacks: dict, at_start: bool) -> list:
    """eq. 88 on the first layers of a group of states (one head each): W_L [B, d_1, d_0].
    An application whose input is the key writes in the key's own step (k_t w_t^T, DeltaNet's
    single step); every other one takes a step of its own. K W_0^T is the pre-activation of
    each state's application on the key when every state has one at these weights (else
    delta_end computes it). The group's end weights are views of one [B G, d_1, d_0] tensor,
    kept in `stacks` so that the next chunk starts from it without copying the weights again."""
    others = {w.target: [app.pairs[0] for app in factors[w.target] if not app.on_key]
              for w in group}
    count = 1 + len(others[group[0].target])                                 # steps per token
    keys, decays, erases, writes, starts, pres = [], [], [], [], [], []
    for write in group:
        lr, decay, key = gates[write.target]
        rate = -lr.unsqueeze(-1)                                              # [B, L, 1]
        first = states[write.target][0]
        on_key = [app for app in factors[write.target] if app.on_key]
        own = rate * sum(app.pairs[0][1] for app in on_key) if on_key else \
            key.new_zeros(key.shape[:-1] + first.shape[-2:-1])                # [B, L, d_1]
        keys.append(_interleave([key] + [a for a, _ in others[write.target]]))   # [B, L n, d_0]
        writes.append(_interleave([own] + [rate * d for _, d in others[write.target]]))
        if count > 1:                  # the other applications' steps: decay 1, erase 0
            one = torch.ones_like(lr)
            decay = _interleave([decay] + [one] * (count - 1))
            lr = _interleave([lr] + [one.new_zeros(()).expand_as(lr)] * (count - 1))
        decays.append(decay)
        erases.append(lr)
        starts.append(first)                                                  # [B, d_1, d_0]
        if at_start and on_key:        # K W_0^T; other steps' rows meet erase 0
            pre = on_key[0].pre                                               # [B, L, d_1]
            pres.append(_interleave([pre] + [pre.new_zeros(()).expand_as(pre)] * (count - 1)))
    stack = lambda parts: parts[0] if len(parts) == 1 else \
        torch.stack(parts, dim=1).flatten(0, 1)                               # [B G, ..]
    bsz, names = starts[0].shape[0], tuple(w.target for w in group)
    views, stacked = stacks.get(names, ((), None))
    w0 = stacked if len(views) == len(starts) and all(a is b for a, b in zip(views, starts)) \
        else stack(starts)
    pre = stack(pres) if len(pres) == len(group) else None
    end = delta_end(w0, stack(decays), stack(erases), stack(keys), stack(writes), pre)
    ends = end.view(bsz, len(group), *end.shape[1:]).unbind(1)               # [B, d_1, d_0] each
    stacks[names] = (ends, end)
    return list(ends)


def delta_end(w0, a, c, k, w, pre=None):
    """W_L of W_t = W_{t-1} (a_t I - c_t k_t k_t^T) + w_t k_t^T over one block, in the WY/UT
    form of delta_chunk.py transposed (S = W^T there): w0 [G, d_1, d_0], a, c [G, L],
    k [G, L, d_0], w [G, L, d_1]. There U, V = (I + N)^{-1} [W, c gamma' K] and
    W_L = gamma_L W_0 + (U - V W_0^T)^T E, E = D[L-1, :] o K; by linearity
    U - V W_0^T = (I + N)^{-1} (W - c gamma' o K W_0^T): one solve of d_1 columns, and
    K W_0^T [G, L, d_1] is `pre` when the caller has it (the forward's pre-activations of the
    application on the key), else one product. The weights are never transposed or copied."""
    d, gamma = decay_products(a)                                              # [G, L, L], [G, L]
    gamma_prev = F.pad(gamma[:, :-1], (1, 0), value=1.0)
    d_prev = F.pad(d[:, :-1], (0, 0, 1, 0))                                   # D[t-1, i]
    n = torch.bmm(k, k.mT) * (c.unsqueeze(-1) * d_prev)                      # [G, L, L]
    pre = torch.bmm(k, w0.mT) if pre is None else pre                         # K W_0^T
    rhs = w - (c * gamma_prev).unsqueeze(-1) * pre                            # [G, L, d_1]
    delta = _unit_lower_solve(n, rhs)                                         # [G, L, d_1]
    edge = d[:, -1, :].unsqueeze(-1) * k                                      # E [G, L, d_0]
    return _accumulate(w0 * gamma[:, -1, None, None], delta.mT, edge)        # [G, d_1, d_0]


def _accumulate(start: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """start + a @ b, in place into `start` (a fresh tensor: one pass over the weights fewer);
    under autocast (a, b in a lower precision) out of place, in start's dtype."""
    if start.dtype == a.dtype == b.dtype:
        return start.baddbmm_(a, b)
    return start + torch.bmm(a, b)


def _unit_lower_solve(n: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """(I + N)^{-1} R for strictly lower N [G, L, L]: one triangular solve (LAPACK's trsm,
    half the time of delta_chunk's inversion at these sizes) where torch has it, float32 and
    float64; delta_chunk.unit_lower_solve otherwise (bfloat16 under autocast)."""
    if n.dtype in (torch.float32, torch.float64):
        return torch.linalg.solve_triangular(n, rhs, upper=False, unitriangular=True)
    return unit_lower_solve(n, rhs)


def _interleave(parts: list[torch.Tensor]) -> torch.Tensor:
    """Per-token steps [B, L, ..] each -> [B, L * len(parts), ..], token-major."""
    return parts[0] if len(parts) == 1 else torch.stack(parts, dim=2).flatten(1, 2)


def _gate_sums(lr: torch.Tensor, decay: torch.Tensor):
    """(-lr_s P_Ls [B, L, 1], P_L0 [B, 1, 1]): the gated sum's factors."""
    suffix = _suffix_products(decay)                                          # [B, L]
    total = suffix[:, 0] * decay[:, 0]                                        # [B]
    return (lr * suffix).neg_().unsqueeze(-1), total[:, None, None]


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    """The applications' factors [B, L, ..] each -> [B, A L, ..] (one is itself, no copy)."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _suffix_products(decay: torch.Tensor) -> torch.Tensor:
    """decay [B, L] -> P [B, L], P[s] = prod_{s<j<L} decay_j (1 at the last token): a reversed
    cumulative product, exact for gates that are 0."""
    shifted = torch.cat([decay[:, 1:], torch.ones_like(decay[:, :1])], dim=1)
    return shifted.flip(1).cumprod(1).flip(1)
