"""runtime/chain.py: a rule chain's transforms on module states, and Newton-Schulz per weight
matrix.

Newton-Schulz of an `mlp` memory is the optimizer kernel's NS of each layer's matrix on its
own (and the paper loops' NS, written from Muon's definition); a matrix state is orthogonalised
per sequence and head. A chain on a matrix memory (the Omega rule optimised by Muon, Atlas eqs.
32-33 with a linear memory) computes tests/paper_loops.py's `atlas_loop` with one linear layer.
Tolerances: float64; NS_k amplifies its input's rounding at most 4^k
(tests/test_module_deep_memories.py), the loop's products are at most 4 long.
"""
from __future__ import annotations

import pytest
import torch

import paper_loops as pl
from _module_cases import U64, assert_close, inputs, randomize
from nldsl.checking.derivations import check_derivations
from nldsl.lower.program import MLPLayout
from nldsl.module import compile as compile_module
from nldsl.optim.kernels import newton_schulz
from nldsl.runtime import mlp
from nldsl.runtime.chain import newton_schulz_state

LAYOUT = MLPLayout((3, 5, 3), "gelu", True)


def test_newton_schulz_of_an_mlp_state_is_per_layer():
    g = torch.Generator().manual_seed(0)
    flat = torch.randn(2, 4, LAYOUT.size, generator=g, dtype=torch.float64)   # [B, H, P]
    got = mlp.layers(LAYOUT, newton_schulz_state(flat, LAYOUT, 5))
    for i, (w, out) in enumerate(zip(mlp.layers(LAYOUT, flat), got)):
        for b in range(2):
            for h in range(4):
                # batched and single products may round differently
                one = newton_schulz(w[b, h], 5, precision="float64")
                assert_close(out[b, h], one, 4 ** 5 * 8 * U64, f"layer {i + 1}, {b}, head {h}")
        assert_close(out, pl.newton_schulz(w), 4 ** 5 * 8 * U64, f"layer {i + 1} vs the loop")


def test_newton_schulz_of_a_layernorm_gamma_is_one_row_per_sequence_and_head():
    """gamma [B, H, d_L] is NS'd as a [1, d_L] matrix of its own unit (it was taken for one
    [H, d_L] matrix per sequence, coupling the heads, or [B, d_L] across the batch); the
    layers stay per layer."""
    layout = MLPLayout((3, 5, 3), "gelu", True, norm=True)
    g = torch.Generator().manual_seed(3)
    flat = torch.randn(2, 4, layout.size, generator=g, dtype=torch.float64)   # [B, H, P]
    got = mlp.layers(layout, newton_schulz_state(flat, layout, 5))
    gamma = mlp.layers(layout, flat)[-1]                                      # [B, H, d_L]
    for b in range(2):
        for h in range(4):
            one = newton_schulz(gamma[b, h].unsqueeze(0), 5, precision="float64")[0]
            assert_close(got[-1][b, h], one, 4 ** 5 * 8 * U64, f"gamma {b}, head {h}")
    unnormed = MLPLayout((3, 5, 3), "gelu", True)
    layers = mlp.layers(unnormed, newton_schulz_state(flat[..., :unnormed.size], unnormed, 5))
    for i, (a, b) in enumerate(zip(got, layers)):
        assert torch.equal(a, b), f"layer {i + 1}"


def test_newton_schulz_of_a_matrix_state_is_per_sequence_and_head():
    g = torch.Generator().manual_seed(1)
    state = torch.randn(3, 2, 4, 6, generator=g, dtype=torch.float64)        # [B, H, m, n]
    assert_close(newton_schulz_state(state, None, 3), pl.newton_schulz(state, 3),
                 4 ** 3 * 8 * U64, "matrix state")


@pytest.mark.parametrize("dtype, computed", [
    pytest.param(torch.float64, torch.float64, id="float64-stays"),
    pytest.param(torch.float32, torch.float32, id="float32"),
    pytest.param(torch.bfloat16, torch.float32, id="bfloat16-in-float32")])
def test_newton_schulz_computes_in_the_wider_precision(dtype, computed):
    g = torch.Generator().manual_seed(2)
    state = torch.randn(2, 4, 6, generator=g, dtype=torch.float64)
    got = newton_schulz_state(state.to(dtype), None, 2)
    assert got.dtype == dtype
    expected = pl.newton_schulz(state.to(dtype).to(computed), 2).to(dtype)
    tolerance = 4 ** 2 * 8 * torch.finfo(computed).eps
    assert (got.double() - expected.double()).abs().max() <= tolerance * 2 + \
        torch.finfo(dtype).eps


OMEGA_MUON = '''module omega_muon(dim: int >= 1, heads = 2 >= 1, head_dim = 3 >= 1, window_size = 3 >= 1,
                  chunk_size = 2 >= 1, ns_steps = 3 >= 1) {
  state Wk : [dim, heads * head_dim] = normal(0.3)
  state Wv : [dim, heads * head_dim] = normal(0.3)
  state Wq : [dim, heads * head_dim] = normal(0.3)
  state W_eta : [dim, heads] = normal(0.3)
  state W_theta : [dim, heads] = normal(0.3)
  state W_alpha : [dim, heads] = normal(0.3)
  state W_gamma : [dim, heads] = normal(0.3)
  state Wo : [heads * head_dim, dim] = normal(0.3)
  level memory every 1 token chunk chunk_size heads heads backprop {
    state M : [head_dim, head_dim] init learned
    key   k = l2norm(x @ Wk)
    value v = x @ Wv
    query q = x @ Wq
    gate  eta = sigmoid(x @ W_eta)
    gate  theta = sigmoid(x @ W_theta)
    gate  alpha = sigmoid(x @ W_alpha)
    gate  gamma = sigmoid(x @ W_gamma)
    minimize window(window_size, l2(M @ k, v), gamma)
      by momentum(lr = 1, beta = theta) then newton_schulz(ns_steps) then gd(lr = eta, decay = alpha)
    read y = M @ q
  }
  out = y @ Wo
}
'''


def omega_muon(schedule: str, **hparams):
    torch.manual_seed(0)
    m = compile_module(OMEGA_MUON, schedule=schedule, dim=5, **hparams).double()
    randomize(m, 4)
    with torch.no_grad():
        m.M_init.copy_(torch.randn(m.M_init.shape, generator=torch.Generator().manual_seed(5),
                                   dtype=torch.float64))
    return m


def omega_muon_loop(m, x):
    heads = m.program.levels[0].heads
    per_head = lambda a: a.reshape(*a.shape[:-1], heads, -1).transpose(1, 2)   # [B, H, T, d]
    k = per_head(x @ m.Wk)
    k = k / k.norm(dim=-1, keepdim=True)
    gate = lambda w: torch.sigmoid(x @ w).transpose(1, 2)                     # [B, H, T]
    hp = m.program.hparams
    y, (w,), (s,) = pl.atlas_loop(k, per_head(x @ m.Wv), per_head(x @ m.Wq), gate(m.W_eta),
                                  gate(m.W_theta), gate(m.W_alpha), gate(m.W_gamma), [m.M_init],
                                  hp["chunk_size"], window=hp["window_size"],
                                  ns_steps=hp["ns_steps"], residual=False)
    return y.transpose(1, 2).flatten(2) @ m.Wo, w, s


@pytest.mark.parametrize("schedule", ["reference", "chunked"])
@pytest.mark.parametrize("steps, chunk, window", [pytest.param(7, 2, 3, id="T7-chunk2-window3"),
                                                  pytest.param(6, 1, 4, id="T6-chunk1-window4")])
def test_a_chain_on_a_matrix_memory_is_atlas_with_a_linear_memory(schedule, steps, chunk, window):
    m = omega_muon(schedule, chunk_size=chunk, window_size=window)
    x = inputs(2, steps, 5, 6)
    with torch.no_grad():
        y, state = m(x)
        y_loop, w, s = omega_muon_loop(m, x)
    bound = 4 * 2 ** steps * 8 * U64 * 4 ** 3
    assert_close(y, y_loop, bound, "y")
    assert_close(state["memory"]["M"], w, bound, "M")
    assert_close(state["memory"]["M_momentum"], s, bound, "the momentum S")


def test_a_chain_on_a_matrix_memory_carries_its_state_and_has_gradients():
    m = omega_muon("reference")
    x = inputs(2, 7, 5, 7).requires_grad_()
    y, whole = m(x)
    grads = torch.autograd.grad(y.square().sum(), [x] + list(m.parameters()))
    assert all(torch.isfinite(g).all() and g.abs().max() > 0 for g in grads)
    with torch.no_grad():
        y1, state = m(x[:, :3], end=False)
        y2, rest = m(x[:, 3:], state)
    assert torch.equal(torch.cat([y1, y2], 1), y)
    assert torch.equal(rest["memory"]["M"], whole["memory"]["M"])


CHAIN = '''module chained(dim: int >= 1) {
  state Wk : [dim, 4] = normal(0.3)
  state Wv : [dim, 4] = normal(0.3)
  state Wo : [4, dim] = normal(0.3)
  level memory every 1 token backprop {
    state M : mlp(4 -> 6 -> 4, tanh) init learned
    key   k = l2norm(x @ Wk)
    value v = x @ Wv
    minimize l2(M(k), v) by ema(0.8) then newton_schulz(2) then momentum(lr = 0.1, beta = 0.9)
    read y = M(k)
  }
  out = y @ Wo
}
'''


def test_a_chain_keeps_one_buffer_per_rule_by_layer():
    """ema's buffer and the last momentum's are the state's hidden entries, by layer as the
    weights are (docs/modules.md, State)."""
    m = compile_module(CHAIN, schedule="reference", dim=5)
    with torch.no_grad():
        _, state = m(torch.randn(1, 3, 5))
    own = state["memory"]
    assert set(own) == {"M", "M_ema", "M_momentum"}
    for name in own:
        assert [tuple(w.shape) for w in own[name]] == [(1, 6, 4), (1, 4, 6)], name


def test_the_derivations_check_reads_the_chain():
    """The check's own reading of the chain (checking/rules.py) agrees with the compiler's."""
    report = check_derivations(CHAIN, examples=4)
    assert report.status == "pass"
    assert report.checked == ["M: ema then newton_schulz then momentum autograd (rule only: no "
                              "closed form)"]
