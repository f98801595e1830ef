"""lower/windows.py and the window at run time: the Omega rule's sum over the last c tokens.

What the lowering records (the longest window, the contexts kept for past tokens), what it
refuses (a name whose past values are not kept; a width that is no positive whole number), and
the ring buffer in the state: the last c - 1 tokens' contexts, so that a stream cut anywhere
computes what one call computes (the reference runs the same operations: bit for bit), and
gradients flow through it.
"""
from __future__ import annotations

import pytest
import torch

from _module_cases import U64, build, inputs, stream_in_parts
from nldsl.errors import NLDSLCompileError
from nldsl.lower.module import lower_module
from nldsl.module import compile as compile_module
from nldsl.module.checks import resolve_hparams
from nldsl.spec import load

SPEC = '''module omega(dim: int >= 1, c = 3) {
  state Wk : [dim, 4] = normal(0.3)
  state Wv : [dim, 4] = normal(0.3)
  state Wg : [dim, 1] = normal(0.3)
  state Wo : [4, dim] = normal(0.3)
  level memory every 1 token backprop {
    state M : [4, 4] = 0
    key   k = l2norm(x @ Wk)
    value v = x @ Wv
    gate  g = sigmoid(x @ Wg)
    let   e = M @ k - v
    minimize LOSS by gd(lr = 0.5)
    read y = M @ k
  }
  out = y @ Wo
}
'''


def program(loss: str, **values):
    spec = load(SPEC.replace("LOSS", loss))
    return lower_module(spec, resolve_hparams(spec, {"dim": 3, **values}))


def test_atlas_keeps_its_keys_values_and_gates():
    spec = load("atlas")
    (level,) = lower_module(spec, resolve_hparams(spec, {"dim": 8})).levels
    assert (level.window, level.windowed) == (16, ("k", "v", "gamma"))
    assert [step.rule for step in level.writes[0].chain] == ["momentum", "newton_schulz"]
    assert set(level.hidden) == {"M_momentum"}


@pytest.mark.parametrize("loss, width, kept", [
    pytest.param("window(c, l2(M @ k, v), g)", 3, ("k", "v", "g"), id="gamma-kept"),
    pytest.param("window(2, l2(M @ k, v)) + window(c, dot(M @ k, v))", 3, ("k", "v"),
                 id="two-windows-the-longest"),
    pytest.param("window(c, l2(e, 0))", 3, ("k", "v"), id="through-a-let-of-the-state"),
    pytest.param("l2(M @ k, v)", 1, (), id="no-window"),
])
def test_what_the_lowering_keeps(loss, width, kept):
    (level,) = program(loss).levels
    assert (level.window, level.windowed) == (width, kept)


@pytest.mark.parametrize("loss, where, message", [
    pytest.param("window(c, l2(M @ k, x @ Wv))", "x @ Wv))", "'x' is not one of them", id="x"),
    pytest.param("window(c, l2(M @ k, v), 1 / t)", "t)", "'t' is not one of them", id="t"),
])
def test_a_window_sees_only_the_levels_contexts(loss, where, message):
    text = SPEC.replace("LOSS", loss)
    with pytest.raises(NLDSLCompileError) as info:
        compile_module(text, dim=3)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if where in row)
    col = text.splitlines()[line - 1].index(where) + 1
    assert f":{line}:{col}: error: `window` sees past tokens" in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize("c", [pytest.param(0, id="zero"), pytest.param(2.5, id="fraction")])
def test_a_window_width_is_a_positive_whole_number(c):
    with pytest.raises(NLDSLCompileError, match="the window's width is"):
        program("window(c, l2(M @ k, v), g)", c=c)


def test_the_ring_buffer_holds_the_last_tokens_contexts():
    """After T tokens, `k.window` is k at tokens T - c + 2 .. T: [B, c - 1, (H,) d], oldest
    first; fewer at the start of a stream."""
    m = build("atlas", "reference", heads=2, window_size=4)
    x = inputs(2, 6, 8, 0)
    with torch.no_grad():
        _, early = m(x[:, :2], end=False)
        _, state = m(x)
        keys = [m(x[:, :t + 1])[1]["memory"]["k.window"][:, -1] for t in range(6)]
    assert early["memory"]["k.window"].shape == (2, 2, 2, 4)
    assert state["memory"]["k.window"].shape == (2, 3, 2, 4)
    assert state["memory"]["gamma.window"].shape == (2, 3, 2)
    assert torch.equal(state["memory"]["k.window"], torch.stack(keys[3:6], 1))


@pytest.mark.parametrize("cuts", [pytest.param((3,), id="mid-chunk"),
                                  pytest.param((1, 2, 3, 4, 5, 6, 7, 8), id="every-token")])
def test_a_cut_stream_equals_one_call(cuts):
    m = build("atlas", "reference", heads=2, window_size=4)
    x = inputs(2, 9, 8, 1)
    with torch.no_grad():
        y, whole = m(x)
        streamed, state = stream_in_parts(m, x, cuts)
    assert torch.equal(streamed, y)
    for name, value in whole["memory"].items():
        expected = value if isinstance(value, tuple) else (value,)
        got = state["memory"][name] if isinstance(value, tuple) else (state["memory"][name],)
        assert all(torch.equal(a, b) for a, b in zip(got, expected)), name


def test_gradients_flow_through_the_window_to_every_parameter():
    m = build("atlas", "reference", heads=2)
    x = inputs(2, 7, 8, 2).requires_grad_()
    y, _ = m(x)
    grads = torch.autograd.grad(y.square().sum(), [x] + list(m.parameters()))
    names = ["x"] + [n for n, _ in m.named_parameters()]
    for name, g in zip(names, grads):
        assert torch.isfinite(g).all() and g.abs().max() > 0, name


def test_atlas_at_its_default_initialisation_stays_finite():
    """float32, the spec's own initialisation and hyper-parameters (window 16, chunk 64, 5
    Newton-Schulz steps, max_lr 0.1; heads of 16 to keep the token loop quick), 2 sequences of
    80 tokens: two chunks, the window crossing their boundary."""
    torch.manual_seed(0)
    m = compile_module("atlas", schedule="reference", dim=32, heads=2, head_dim=16)
    x = torch.randn(2, 80, 32, requires_grad=True)
    y, state = m(x)
    y.square().mean().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    assert all(torch.isfinite(w).all() for w in state["memory"]["M"])


@pytest.mark.parametrize("change, message", [
    pytest.param(lambda own: own.update({"k.window": own["k.window"][:1]}), "batch 2",
                 id="batch"),
    pytest.param(lambda own: own.update({"q.window": own["k.window"]}), "keeps no window of 'q'",
                 id="unknown"),
])
def test_a_wrong_ring_buffer_is_named(change, message):
    m = build("atlas", "reference", heads=2, window_size=3)
    x = inputs(2, 4, 8, 3)
    with torch.no_grad():
        _, state = m(x, end=False)
        change(state["memory"])
        with pytest.raises(ValueError, match=message):
            m(x, state)


def test_a_window_on_a_level_without_heads_is_the_windowed_delta_rule():
    """M_t = M_{t-1} - 0.5 sum_{i = t-2}^{t} g_i (M_{t-1} k_i - v_i) k_i^T, y_t = M_t k_t: the
    Omega rule by gd on a matrix memory (chunk 1), written out by hand."""
    torch.manual_seed(0)
    m = compile_module(SPEC.replace("LOSS", "window(c, l2(M @ k, v), g)"), schedule="reference",
                       dim=3).double()
    x = inputs(2, 6, 3, 4)
    with torch.no_grad():
        y, state = m(x)
    k = x @ m.Wk
    k = k / k.norm(dim=-1, keepdim=True)                                    # [B, T, 4]
    v, g = x @ m.Wv, torch.sigmoid(x @ m.Wg)[..., 0]                        # [B, T, 4], [B, T]
    memory, ys = torch.zeros(2, 4, 4, dtype=torch.float64), []
    for t in range(6):
        grad = sum(g[:, i, None, None] * ((memory @ k[:, i, :, None])[..., 0] - v[:, i])[..., None]
                   * k[:, i, None, :] for i in range(max(0, t - 2), t + 1))
        memory = memory - 0.5 * grad
        ys.append((memory @ k[:, t, :, None])[..., 0])
    # O(1) values, products of length <= 4, 6 tokens: a few hundred roundings at most
    torch.testing.assert_close(y, torch.stack(ys, 1) @ m.Wo, rtol=0, atol=1e3 * U64)
    torch.testing.assert_close(state["memory"]["M"], memory, rtol=0, atol=1e3 * U64)
