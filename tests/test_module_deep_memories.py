"""Issue 10: the deep memories compute their papers' recurrences.

The module's keys, values, queries and gates are recomputed here from its parameters with
plain torch (as tests/test_module_recurrences.py does for the linear family); the memory
itself is tests/paper_loops.py's token loop, written from the papers' equations with one
`torch.autograd.grad` per token. Both schedules are compared with it.

Tolerance (`deep_bound`): the loop and a schedule evaluate the same real function with
differently associated float64 sums. One token forms inner products of length at most the
hidden width w and a few elementwise roundings: (w + 3) u relative per token. Unlike a unit-key
delta rule, an MLP memory's write is not a contraction: the step from M_{t-1} to M_t has
Lipschitz constant at most 1 + theta ||d^2 l / dM^2||, below 2 for these sizes (theta <= 0.5,
O(1) weights), so errors of earlier tokens grow at most 2^T. Hence 4 * 2^T (w + 3) u, the 4
for the projections, convs, norms and gates around the memory. A schedule bug (a gate at the
wrong token, a gradient at the wrong snapshot) moves outputs by O(theta) = 1e-1.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _module_cases import U64, assert_close, build, forbid_fallback, inputs
from paper_loops import expand, mlp, titans_loop, yaad_loop
from test_module_recurrences import causal_conv, l2n, split


def deep_bound(steps: int, width: int) -> float:
    return 4 * 2 ** steps * (width + 3) * U64


def titans_inputs(m, x, heads, lr="W_theta", momentum="W_eta"):
    """Titans sec. 4.4 as titans.nl writes it: q, k, v = SiLU(conv(x W)), q and k l2-normalised;
    theta = sigmoid(x W_theta) max_lr, eta = sigmoid(x W_eta), alpha = sigmoid(x W_alpha)
    (yaad.nl: the rate from W_eta, no momentum gate)."""
    k = l2n(split(F.silu(causal_conv(x @ m.Wk, m.k_conv)), heads))
    v = split(F.silu(causal_conv(x @ m.Wv, m.v_conv)), heads)
    q = l2n(split(F.silu(causal_conv(x @ m.Wq, m.q_conv)), heads))
    per_head = lambda a: a.permute(0, 2, 1, 3)                         # [B, H, T, d]
    gate = lambda w: torch.sigmoid(x @ w).transpose(1, 2)               # [B, H, T]
    theta = gate(getattr(m, lr)) * m.program.hparams["max_lr"]
    eta = gate(getattr(m, momentum)) if momentum != "W_alpha" else None
    return per_head(k), per_head(v), per_head(q), theta, eta, gate(m.W_alpha)


def titans(m, x, heads):
    """The LMM loop (Titans eqs. 8-16) around the spec's block: out = (rmsnorm(y) * scale *
    sigmoid(x W_gate)) Wo, rmsnorm over the merged heads."""
    k, v, q, theta, eta, alpha = titans_inputs(m, x, heads)
    y, weights, momentum = titans_loop(k, v, q, theta, eta, alpha, [m.M_init_w1, m.M_init_w2],
                                       m.program.hparams["chunk_size"])
    return merged_out(m, x, y), weights, momentum


def merged_out(m, x, y):
    """The titans/yaad block around the memory: (rmsnorm(y) * scale * sigmoid(x W_gate)) Wo,
    rmsnorm over the merged heads. y [B, H, T, d] -> [B, T, dim]."""
    y = y.permute(0, 2, 1, 3).flatten(2)                                # [B, T, H*d]
    y = y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + 1e-5)
    return (y * m.norm_scale * torch.sigmoid(x @ m.W_gate)) @ m.Wo


def yaad(m, x, heads):
    """Miras' Yaad (Huber bias, retention alpha) around the same block as titans.nl: eta =
    sigmoid(x W_eta) max_lr, alpha = sigmoid(x W_alpha), delta = softplus(x W_delta)."""
    k, v, q, eta, _, alpha = titans_inputs(m, x, heads, lr="W_eta", momentum="W_alpha")
    delta = F.softplus(x @ m.W_delta).transpose(1, 2)                   # [B, H, T]
    y, weights, _ = yaad_loop(k, v, q, eta, alpha, delta, [m.M_init_w1, m.M_init_w2],
                              m.program.hparams["chunk_size"])
    return merged_out(m, x, y), weights, None


def compare_with_paper(spec, schedule, paper, steps, seed, monkeypatch, **overrides):
    """Build `spec` (fast path asserted in the chunked schedule when its chunk is > 1), run it
    on 2 sequences, and compare the output, final weights and momentum with `paper`'s loop.
    The papers' rules have no guard: max_grad_norm = inf (never clips)."""
    heads = 2
    m = build(spec, schedule, heads=heads, seed=seed,
              **{"max_grad_norm": float("inf"), **overrides})
    if schedule == "chunked" and m.program.levels[0].chunk > 1:
        assert m.fast_paths
        forbid_fallback(monkeypatch)
    x = inputs(2, steps, m.program.dim, seed)
    with torch.no_grad():
        y, state = m(x)
        y_paper, weights, momentum = paper(m, x, heads)
    bound = deep_bound(steps, 4 * 4)
    assert_close(y, y_paper, bound, f"{spec} {schedule} y")
    for i, (w, w_paper) in enumerate(zip(state["memory"]["M"], weights)):
        assert_close(w, w_paper, bound, f"{spec} {schedule} final layer {i + 1}")
    for i, (s, s_paper) in enumerate(zip(state["memory"].get("M_momentum", ()), momentum or ())):
        assert_close(s, s_paper, bound, f"{spec} {schedule} final momentum layer {i + 1}")
    return m, x


@pytest.mark.parametrize("schedule", ["reference", "chunked"])
@pytest.mark.parametrize("steps, chunk", [pytest.param(7, 3, id="T7-chunk3"),
                                          pytest.param(8, 4, id="T8-chunk4"),
                                          pytest.param(5, 1, id="T5-chunk1")])
def test_titans_is_its_papers_recurrence(schedule, steps, chunk, monkeypatch):
    compare_with_paper("titans", schedule, titans, steps, 3, monkeypatch, chunk_size=chunk)


@pytest.mark.parametrize("schedule", ["reference", "chunked"])
def test_yaad_is_its_papers_recurrence(schedule, monkeypatch):
    """T 7, chunk 3; delta = softplus(.) around 0.7 and O(1) residuals, so both Huber branches
    are taken (asserted), and the l1 branch's gradient delta sign(r) is checked too."""
    m, x = compare_with_paper("yaad", schedule, yaad, 7, 2, monkeypatch)
    k, v, _, _, _, _ = titans_inputs(m, x, 2, lr="W_eta", momentum="W_alpha")
    delta = F.softplus(x @ m.W_delta).transpose(1, 2)                   # [B, H, T]
    first = mlp(expand([m.M_init_w1, m.M_init_w2], 2), k[:, :, 0]) - v[:, :, 0]
    small = first.norm(dim=-1) <= delta[:, :, 0]                         # the first chunk's start
    assert small.any() and not small.all(), "the seed must take both Huber branches"
