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

Atlas adds Newton-Schulz to every write. The quintic p(s) = a s + b s^3 + c s^5 that NS_k
applies to each singular value has slope |p'| <= 4 where its iterates lie (s <= 1.25: p'(0) = a
= 3.44, p'(1.25) < 4), so k steps amplify a rounding of their input at most 4^k: the Atlas
bound is `deep_bound` times 4^k. A window of the wrong width moves Atlas' outputs by ~5e-2
(measured: window c against c + 1).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _module_cases import U64, assert_close, build, forbid_fallback, inputs
from paper_loops import atlas_loop, expand, memora_loop, mlp, moneta_loop, polynomial_features, \
    titans_loop, yaad_loop
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


def atlas(m, x, heads):
    """Atlas (eqs. 9, 32-33) around titans' block, as atlas.nl writes it: eta = sigmoid(x W_eta)
    max_lr, theta = sigmoid(x W_theta), alpha = sigmoid(x W_alpha), gamma = sigmoid(x W_gamma);
    phi the identity."""
    k, v, q, eta, theta, alpha = titans_inputs(m, x, heads, lr="W_eta", momentum="W_theta")
    gamma = torch.sigmoid(x @ m.W_gamma).transpose(1, 2)                # [B, H, T]
    hp = m.program.hparams
    y, weights, momentum = atlas_loop(k, v, q, eta, theta, alpha, gamma,
                                      [m.M_init_w1, m.M_init_w2], hp["chunk_size"],
                                      window=hp["window_size"], ns_steps=hp["ns_steps"])
    return merged_out(m, x, y), weights, momentum


def atlas_polynomial(m, x, heads):
    """examples/atlas_polynomial.nl: Atlas with phi = polynomial_features(., 2) without its
    constant (coefficients 1 and 1/2!) on keys and queries, a non-residual memory."""
    per_head = lambda a: split(a, heads).permute(0, 2, 1, 3)           # [B, H, T, d]
    k = l2n(per_head(F.silu(causal_conv(x @ m.Wk, m.kb_conv))))
    q = l2n(per_head(F.silu(causal_conv(x @ m.Wq, m.qb_conv))))
    v = per_head(F.silu(causal_conv(x @ m.Wv, m.v_conv)))
    gate = lambda w: torch.sigmoid(x @ w).transpose(1, 2)               # [B, H, T]
    hp = m.program.hparams
    y, weights, momentum = atlas_loop(
        k, v, q, gate(m.W_eta) * hp["max_lr"], gate(m.W_theta), gate(m.W_alpha), gate(m.W_gamma),
        [m.M_init_w1, m.M_init_w2], hp["chunk_size"], window=hp["window_size"],
        ns_steps=hp["ns_steps"], residual=False,
        feature_map=lambda u: polynomial_features(u, 2, constant=False))
    return merged_out(m, x, y), weights, momentum


def moneta(m, x, heads):
    """Miras' Moneta around the titans/yaad block: eta = sigmoid(x W_eta) max_lr, alpha =
    sigmoid(x W_alpha); the loop's dual state A is the spec's state."""
    k, v, q, eta, _, alpha = titans_inputs(m, x, heads, lr="W_eta", momentum="W_alpha")
    p = m.program.hparams
    y, _, dual = moneta_loop(k, v, q, eta, alpha, [m.A_init_w1, m.A_init_w2], p["chunk_size"],
                             bias_p=p["bias_p"], retention_q=p["retention_q"], eps=p["eps"])
    return merged_out(m, x, y), dual, None


def memora(m, x, heads):
    """Miras' Memora around the same block, written on W = c softmax(L_0) (the loop has no
    logits); the spec's final logits are compared through c softmax."""
    k, v, q, eta, _, alpha = titans_inputs(m, x, heads, lr="W_eta", momentum="W_alpha")
    c = m.program.hparams["c"]
    w0 = [c * torch.softmax(w, dim=-1) for w in (m.L_init_w1, m.L_init_w2)]
    y, weights, _ = memora_loop(k, v, q, eta, alpha, w0, m.program.hparams["chunk_size"], c=c)
    return merged_out(m, x, y), weights, None


def compare_with_paper(spec, schedule, paper, steps, seed, monkeypatch, fast=True, state="M",
                       seen=lambda m, w: w, **overrides):
    """Build `spec` (fast path asserted in the chunked schedule when its chunk is > 1 and
    `fast`), run it on 2 sequences, and compare the output, final weights (`seen` maps the
    spec's state layer to the loop's) and momentum with `paper`'s loop. The papers' rules have
    no guard: max_grad_norm = inf (never clips) where the spec has one."""
    heads = 2
    guard = {"max_grad_norm": float("inf")} if spec in ("titans", "yaad", "moneta", "memora") \
        else {}
    m = build(spec, schedule, heads=heads, seed=seed, **{**guard, **overrides})
    if schedule == "chunked" and m.program.levels[0].chunk > 1 and fast:
        assert m.fast_paths
        forbid_fallback(monkeypatch)
    x = inputs(2, steps, m.program.dim, seed)
    with torch.no_grad():
        y, final = m(x)
        y_paper, weights, momentum = paper(m, x, heads)
    bound = deep_bound(steps, 4 * 4) * 4 ** m.program.hparams.get("ns_steps", 0)
    assert_close(y, y_paper, bound, f"{spec} {schedule} y")
    for i, (w, w_paper) in enumerate(zip(final["memory"][state], weights)):
        assert_close(seen(m, w), w_paper, bound, f"{spec} {schedule} final layer {i + 1}")
    for i, (s, s_paper) in enumerate(zip(final["memory"].get("M_momentum", ()), momentum or ())):
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


@pytest.mark.parametrize("schedule", ["reference", "chunked"])
@pytest.mark.parametrize("steps, chunk, window", [
    pytest.param(7, 3, 3, id="T7-chunk3-window3"),
    pytest.param(8, 4, 6, id="T8-chunk4-window6-crosses-chunks"),
    pytest.param(5, 1, 2, id="T5-chunk1-window2"),
    pytest.param(6, 2, 1, id="T6-chunk2-window1")])
def test_atlas_is_its_papers_recurrence(schedule, steps, chunk, window, monkeypatch):
    """Both schedules compare with the loop; the chunked one in the chain chunk form
    (module/chain_chunk.py) where the chunk is > 1."""
    compare_with_paper("atlas", schedule, atlas, steps, 3, monkeypatch, chunk_size=chunk,
                       window_size=window)


def test_atlas_window_width_matters():
    """The comparison above can tell a window from its neighbour: c and c + 1 differ by far more
    than its bound."""
    m = build("atlas", "reference", heads=2, seed=3)
    x = inputs(2, 7, m.program.dim, 3)
    with torch.no_grad():
        y, _ = m(x)
        wider = build("atlas", "reference", heads=2, seed=3, window_size=4)(x)[0]
    assert (y - wider).abs().max() > 1e3 * deep_bound(7, 16) * 4 ** 5 * y.abs().max()


@pytest.mark.parametrize("schedule", ["reference", "chunked"])
def test_atlas_with_polynomial_features_is_its_papers_recurrence(schedule, monkeypatch):
    """phi(k) = concat(k, flatten(outer(k, k)) / 2): the memory's input is d + d^2 = 12 wide."""
    m, _ = compare_with_paper("atlas_polynomial", schedule, atlas_polynomial, 7, 4, monkeypatch)
    assert m.M_init_w1.shape == (2, 12, 12)


@pytest.mark.parametrize("schedule", ["reference", "chunked"])
@pytest.mark.parametrize("steps, chunk", [pytest.param(7, 3, id="T7-chunk3"),
                                          pytest.param(5, 1, id="T5-chunk1")])
def test_moneta_is_its_papers_recurrence(schedule, steps, chunk, monkeypatch):
    """The deep Moneta (per-weight l_q normalisation, reads at this token's W_t); the chunked
    schedule runs its derived-memory chunk form (module/derived_chunk.py) where chunk > 1."""
    compare_with_paper("moneta", schedule, moneta, steps, 4, monkeypatch,
                       state="A", chunk_size=chunk)


@pytest.mark.parametrize("schedule", ["reference", "chunked"])
@pytest.mark.parametrize("steps, chunk", [pytest.param(7, 3, id="T7-chunk3"),
                                          pytest.param(5, 1, id="T5-chunk1")])
def test_memora_is_its_papers_recurrence(schedule, steps, chunk, monkeypatch):
    """The deep Memora: the loop's W_t = c softmax(alpha log W_{t-1} - eta g) against the
    spec's logits, seen through c softmax (row-wise per weight)."""
    compare_with_paper("memora", schedule, memora, steps, 5, monkeypatch, state="L",
                       seen=lambda m, w: m.program.hparams["c"] * torch.softmax(w, dim=-1),
                       chunk_size=chunk)
