"""validation/memories.py: what an mlp memory may take part in. The rejections are in the error
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


TIMING = '''module timing(dim: int >= 1) {
  state Wk : [dim, dim] = normal(0.3)
  level memory every 1 token chunk 3 {
    state A : mlp(dim -> 2 * dim -> dim, tanh)
    let W = A / norm(A)
    key k = x @ Wk
    minimize l2(A(k), x) by gd(lr = 0.5)
    read y = W(k)
    read z = W(k) before write
  }
  out = y
}
'''


@pytest.mark.parametrize("read", ["y", "z"])
def test_a_derived_memory_is_seen_at_its_readers_time(tmp_path, read):
    """`let W = A / norm(A)` is per weight (each row of each layer over its norm) and is seen
    when it is used: `read y = W(k)` at this token's A_t, `read z = W(k) before write` at the
    chunk-start A_{t'} (chunk 3, T 7: a partial last chunk). The states A_t come from running
    the stream one token at a time."""
    path = tmp_path / "timing.nl"
    path.write_text(TIMING.replace("out = y", f"out = {read}"))
    torch.manual_seed(0)
    m = compile_module(str(path), schedule="reference", dim=3).double()
    x = torch.randn(2, 7, 3, dtype=torch.float64)
    from nldsl.runtime import mlp
    layout = m.program.level("memory").states["A"].mlp
    normalised = lambda a: [w / w.norm(dim=-1, keepdim=True) for w in a]
    with torch.no_grad():
        state, states = None, [mlp.layers(layout, m.initial_state(2)["memory"]["A"])]
        outputs = []
        for t in range(7):
            y, state = m(x[:, t:t + 1], state, end=False)
            outputs.append(y[:, 0])
            states.append(state["memory"]["A"])
        for t in range(7):
            seen = states[t + 1] if read == "y" else states[3 * (t // 3)]
            expected = mlp.apply(layout, mlp.flatten(layout, normalised(seen)), x[:, t] @ m.Wk)
            torch.testing.assert_close(outputs[t], expected, rtol=0, atol=1e-14)


CHANNEL_MLP = '''module gated_deep(dim: int >= 1, d = 3 >= 1) {
  state Wk : [dim, 2 * d] = normal(0.3)
  state Wv : [dim, 2 * d] = normal(0.3)
  state Wg : [dim, 2 * d] = normal(0.3)
  level memory every 1 token chunk 2 heads 2 {
    state M : mlp(d -> 4 * d -> d, tanh, residual)
    key k = x @ Wk
    value v = x @ Wv
    gate g = sigmoid(x @ Wg)
    minimize l2(M(k), v) by gd(lr = 0.5, decay = g)
    read y = M(k)
  }
  out = y
}
'''


@pytest.mark.parametrize("schedule", ["reference", "chunked"])
def test_a_channel_gate_on_an_mlp_scales_first_layer_inputs_and_last_layer_outputs(tmp_path,
                                                                                 schedule):
    """decay g of width d on d -> 4d -> d, per head: W_1 <- W_1 diag(g) - lr G_1,
    W_2 <- diag(g) W_2 - lr G_2, gradients at the chunk start (chunk 2, T 5), written out
    with autograd. The chunked schedule has no deep form for it and runs the reference."""
    path = tmp_path / "gated.nl"
    path.write_text(CHANNEL_MLP)
    torch.manual_seed(0)
    m = compile_module(str(path), schedule=schedule, dim=4).double()
    assert not m.fast_paths
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    from nldsl.runtime import mlp
    layout = m.program.level("memory").states["M"].mlp
    heads = lambda a: a.unflatten(-1, (2, 3))                           # [B, H, d]
    with torch.no_grad():
        start = mlp.layers(layout, m.initial_state(2)["memory"]["M"])
        _, state = m(x)
    w = [layer.clone() for layer in start]                              # [B, H, o, i]
    for t in range(5):
        if t % 2 == 0:
            snapshot = [layer.clone() for layer in w]
        k, v, g = heads(x[:, t] @ m.Wk), heads(x[:, t] @ m.Wv), torch.sigmoid(heads(x[:, t] @ m.Wg))
        leaves = [layer.detach().requires_grad_() for layer in snapshot]
        loss = 0.5 * (mlp.apply(layout, mlp.flatten(layout, leaves), k) - v).pow(2).sum()
        grads = torch.autograd.grad(loss, leaves)
        w = [w[0] * g[..., None, :] - 0.5 * grads[0], g[..., :, None] * w[1] - 0.5 * grads[1]]
    for got, expected in zip(state["memory"]["M"], w):
        torch.testing.assert_close(got, expected.detach(), rtol=0, atol=1e-13)


@pytest.mark.parametrize("rate", [pytest.param("0.5 * e * g", id="per-head-times-channel"),
                                  pytest.param("g * g", id="channel-times-channel")])
def test_a_channel_gate_is_one_heads_value_inside_a_rule(tmp_path, rate):
    """Inside `heads 2`, a rule's argument is one head's value: the gate e = sigmoid(x @ We) [2]
    a number per head, g [2 * d] a [d] vector per head, so e * g is a channel-wise gate of width d
    (tests/test_fuzz_deep.py FOUND "per-head-rate-times-channel-gate": the check inferred the
    argument outside the level, [2] vs [2 * d], and refused it)."""
    path = tmp_path / "gated.nl"
    path.write_text(CHANNEL_MLP.replace("lr = 0.5", f"lr = {rate}").replace(
        "  state Wg", "  state We : [dim, 2] = normal(0.3)\n  state Wg").replace(
        "    gate g =", "    gate e = sigmoid(x @ We)\n    gate g ="))
    nldsl.load(str(path))
