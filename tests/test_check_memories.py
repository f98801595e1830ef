"""check_memories.py: what an mlp memory may take part in. The rejections are in the error
catalogue (tests/errors/mlp_*.nl); here, what is accepted, and that it means per weight."""
from __future__ import annotations

import pytest
import torch

import nldsl
from nldsl.module import compile as compile_module

ACCEPTED = '''module mix(dim: int >= 1) {
  state Wk : [dim, dim] = normal(0.3)
  state Wg : [dim, 1] = normal(0.3)
  level memory every 1 token {
    state M : mlp(dim -> 2 * dim -> dim, tanh)
    state N like M
    key k = x @ Wk
    gate g = sigmoid(x @ Wg)
    M <- g * M + (1 - g) * N / 2 - -N
    read y = M(k)
  }
  out = y
}
'''


@pytest.mark.parametrize("variant", [
    pytest.param(ACCEPTED, id="scaled-sum-of-two-states"),
    pytest.param(ACCEPTED.replace("g * M + (1 - g) * N / 2 - -N", "-M"), id="negation"),
])
def test_per_weight_algebra_validates(tmp_path, variant):
    path = tmp_path / "mix.nl"
    path.write_text(variant)
    nldsl.load(str(path))


def test_per_weight_algebra_is_per_weight(tmp_path):
    """One token: every layer of M becomes g W_M + (1 - g) W_N / 2 + W_N."""
    path = tmp_path / "mix.nl"
    path.write_text(ACCEPTED)
    torch.manual_seed(0)
    m = compile_module(str(path), schedule="reference", dim=3).double()
    x = torch.randn(2, 1, 3, dtype=torch.float64)
    start = m.initial_state(2)["memory"]
    with torch.no_grad():
        _, state = m(x)
        g = torch.sigmoid(x[:, 0] @ m.Wg)[:, :, None]                    # [B, 1, 1]
    from nldsl.runtime import mlp
    layout = m.program.level("memory").states["M"].mlp
    for w, w_m, w_n in zip(state["memory"]["M"], mlp.layers(layout, start["M"]),
                           mlp.layers(layout, start["N"])):
        expected = g * w_m + (1 - g) * w_n / 2 + w_n
        assert torch.allclose(w, expected, rtol=0, atol=1e-15)


CHANNEL_GATE = '''module gla_like(dim: int >= 1, dk = 3 >= 1, dv = 5 >= 1) {
  state Wk : [dim, dk] = normal(0.3)
  state Wv : [dim, dv] = normal(0.3)
  state Wg : [dim, dk] = normal(0.3)
  state Wo : [dv, dim] = normal(0.3)
  level memory every 1 token {
    state M : [dv, dk]
    key k = x @ Wk
    value v = x @ Wv
    gate g = sigmoid(x @ Wg)
    minimize l2(M(k), v) by gd(lr = 0.5, decay = g)
    read y = M(k)
  }
  out = y @ Wo
}
'''


@pytest.mark.parametrize("schedule", ["reference", "chunked"])
def test_a_key_width_gate_scales_the_columns(tmp_path, schedule):
    """decay of width d_k: M_t = M_{t-1} diag(g_t) - lr (M_{t-1} k - v) k^T, written out."""
    path = tmp_path / "gla.nl"
    path.write_text(CHANNEL_GATE)
    torch.manual_seed(0)
    m = compile_module(str(path), schedule=schedule, dim=4).double()
    x = torch.randn(2, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        _, state = m(x)
        s = torch.zeros(2, 5, 3, dtype=torch.float64)
        for t in range(4):
            k, v, g = x[:, t] @ m.Wk, x[:, t] @ m.Wv, torch.sigmoid(x[:, t] @ m.Wg)
            error = torch.einsum("bvk,bk->bv", s, k) - v
            s = s * g[:, None, :] - 0.5 * torch.einsum("bv,bk->bvk", error, k)
    # the same products in another order: a few roundings of O(1) terms over 4 tokens
    assert torch.allclose(state["memory"]["M"], s, rtol=0, atol=1e-13)
