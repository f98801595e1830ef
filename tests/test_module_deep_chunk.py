"""module/deep_chunk.py: the deep-memory chunk form equals the reference schedule.

Outputs, final states (weights by layer, momentum, chunk-start snapshot) and the gradients of x
and of every parameter, in float64, for lengths that chunks do and do not divide, one or
several sequences, a stream cut anywhere (mid-chunk too), and user specs that have the form
under other names. Tolerance: `deep_bound` of tests/test_module_deep_memories.py (the same
real function, sums associated differently); gradients pass twice through it.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings, strategies as st

from _module_cases import U64, assert_close, assert_cut_stream_is_one_call, assert_states_close, \
    build, flat_layers, forbid_fallback, inputs
from nldsl.lower.deep_forms import DeepForm
from nldsl.lower.program import MLPLayout
from nldsl.module.deep_sums import batched_forward
from nldsl.module import compile as compile_module
from nldsl.runtime import mlp
from test_module_deep_memories import deep_bound

CASES = [
    pytest.param("titans", 7, 3, 2, False, id="titans-T7-chunk3-B2"),
    pytest.param("titans", 10, 4, 3, False, id="titans-T10-chunk4-B3"),
    pytest.param("titans", 1, 3, 1, False, id="titans-T1-B1"),
    pytest.param("yaad", 8, 3, 2, False, id="yaad-T8-chunk3-B2"),
    pytest.param("titans", 10, 4, 3, True, id="titans-T10-chunk4-B3-checkpoint"),
    pytest.param("yaad", 8, 3, 2, True, id="yaad-T8-chunk3-B2-checkpoint"),
]


def both(spec, chunk, seed=1, **overrides):
    return [build(spec, schedule, heads=2, chunk_size=chunk, seed=seed, **overrides)
            for schedule in ("reference", "chunked")]



@pytest.mark.parametrize("spec, steps, chunk, batch, checkpoint", CASES)
def test_chunked_equals_reference(spec, steps, chunk, batch, checkpoint, monkeypatch):
    """With `checkpoint` the chunked schedule recomputes each chunk in the backward pass: the
    same values (its reads per chunk instead of batched over chunks: the same sums)."""
    reference, chunked = both(spec, chunk, checkpoint=checkpoint)
    assert isinstance(chunked.fast_paths["memory"], DeepForm)
    forbid_fallback(monkeypatch)
    x = inputs(batch, steps, 8, 1).requires_grad_()
    bound = deep_bound(steps, 16)
    outputs = {}
    for name, m in (("reference", reference), ("chunked", chunked)):
        y, state = m(x)
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum()
        grads = torch.autograd.grad(loss, [x] + list(m.parameters()))
        outputs[name] = (y, flat_layers(state), grads)
    (y_r, s_r, g_r), (y_c, s_c, g_c) = outputs["reference"], outputs["chunked"]
    assert_close(y_c, y_r, bound, f"{spec} y")
    assert_states_close(s_c, s_r, bound, spec)
    names = ["x"] + [n for n, _ in reference.named_parameters()]
    for name, a, b in zip(names, g_c, g_r):
        assert_close(a, b, 2 * bound, f"{spec} grad {name}")


@pytest.mark.parametrize("cuts", [pytest.param((2, 5), id="mid-chunk"),
                                  pytest.param((3, 6), id="chunk-boundaries"),
                                  pytest.param((1, 2, 3, 4, 5, 6, 7, 8), id="every-token")])
def test_a_cut_stream_equals_one_call(cuts, monkeypatch):
    """The chunk-start snapshot travels in the state, so a cut anywhere continues the chunk."""
    _, m = both("titans", 3)
    forbid_fallback(monkeypatch)
    x = inputs(2, 9, 8, 2)
    assert_cut_stream_is_one_call(m, x, cuts, deep_bound(9, 16))


USER_SPEC = '''module surprise(dim: int >= 1, width = 4 >= 1) {
  state P_in : [dim, 2 * width] = normal(0.3)
  state P_out : [dim, 2 * width] = normal(0.3)
  state P_lr : [dim, 2] = normal(0.3)
  state Back : [2 * width, dim] = normal(0.3)
  level fast every 1 token chunk 4 heads 2 backprop {
    state Net : mlp(width -> 3 * width -> width, tanh) init learned
    key   a = x @ P_in
    value b = x @ P_out
    gate  rate = 0.3 * sigmoid(x @ P_lr)
    minimize lp(Net(a), b, 2) by gd(lr = rate, decay = 0.95)
    read r = Net(a) * 2 before write
    read o = Net(b)
  }
  out = (r + o) @ Back
}
'''


@pytest.mark.parametrize("backprop", [pytest.param(True, id="backprop"),
                                      pytest.param(False, id="detached-writes")])
@pytest.mark.parametrize("steps", [pytest.param(6, id="T6"), pytest.param(9, id="T9")])
def test_a_user_spec_with_the_rule_takes_the_fast_path(tmp_path, steps, backprop, monkeypatch):
    """Other names, an lp loss, tanh, no residual, a constant decay, reads before and after
    the write, no momentum: the structure is the form, so the chunked schedule takes it.
    Without `backprop` the writes are constants for the outer gradient in both schedules."""
    path = tmp_path / "surprise.nl"
    path.write_text(USER_SPEC if backprop else USER_SPEC.replace(" backprop {", " {"))
    torch.manual_seed(0)
    modules = [compile_module(str(path), schedule=s, dim=5).double()
               for s in ("reference", "chunked")]
    modules[1].load_state_dict(modules[0].state_dict())
    assert isinstance(modules[1].fast_paths["fast"], DeepForm)
    forbid_fallback(monkeypatch)
    x = inputs(2, steps, 5, 3).requires_grad_()
    results = []
    for m in modules:
        y, state = m(x)
        grads = torch.autograd.grad(y.square().sum(), [x] + list(m.parameters()), allow_unused=True)
        results.append((y, flat_layers(state), [g if g is not None else torch.zeros(()) for g in grads]))
    bound = deep_bound(steps, 12)
    assert_close(results[1][0], results[0][0], bound, "y")
    for key, value in results[0][1].items():
        if isinstance(value, torch.Tensor):
            assert_close(results[1][1][key], value, bound, key)
    for a, b in zip(results[1][2], results[0][2]):
        assert_close(a, b, 2 * bound, "grad")


@pytest.mark.parametrize("change, why", [
    pytest.param(("chunk 4", "chunk 1"), "chunk 1: every gradient at the previous state",
                 id="chunk-1"),
    pytest.param(("minimize lp(Net(a), b, 2)", "minimize lp(Net(a), b, 2) + l2(Net(b), a)"),
                 "two inputs to the memory", id="two-inputs"),
    pytest.param(("every 1 token", "every 2 tokens"), "a period of 2", id="period-2"),
])
def test_what_is_not_the_form_runs_the_reference(tmp_path, change, why):
    path = tmp_path / "other.nl"
    path.write_text(USER_SPEC.replace(*change))
    m = compile_module(str(path), schedule="chunked", dim=5)
    assert m.fast_paths == {}, why


def test_the_documented_titans_variant_takes_the_fast_path():
    """docs/modules.md, "Writing a deep memory": examples/titans_huber.nl."""
    m = compile_module("examples/titans_huber.nl", dim=8, heads=2, head_dim=4, chunk_size=4)
    form = m.fast_paths["memory"]
    assert isinstance(form, DeepForm) and form.beta is not None
    y, _ = m(torch.randn(1, 6, 8))
    assert y.shape == (1, 6, 8) and torch.isfinite(y).all()


# -- the per-token gradients of one chunk against torch.func's vmap of grad -------------------


LOSSES = {"l2": lambda y, v: 0.5 * (y - v).pow(2).sum(-1),
          "lp3": lambda y, v: (y - v).abs().pow(3).sum(-1) / 3,
          "dot": lambda y, v: -(y * v).sum(-1)}


@st.composite
def chunk_cases(draw):
    widths = draw(st.lists(st.integers(1, 5), min_size=2, max_size=4))
    residual = widths[0] == widths[-1] and draw(st.booleans())
    layout = MLPLayout(tuple(widths), draw(st.sampled_from(sorted(mlp.ACTIVATIONS))), residual)
    return layout, draw(st.integers(1, 6)), draw(st.integers(1, 2)), \
        draw(st.sampled_from(sorted(LOSSES))), draw(st.integers(0, 2 ** 16))


@settings(max_examples=40, deadline=None)
@given(chunk_cases())
def test_per_token_gradients_are_delta_times_input(case):
    """G_t = sum_i delta_{i,t} a_{i-1,t}^T from one backward of the summed loss to the
    pre-activations equals each token's own gradient (torch.func.vmap of grad) at the same
    weights. Same products, summed in other orders: a few u relative to the terms' size."""
    from torch.func import grad, vmap

    layout, steps, heads, loss_name, seed = case
    loss = LOSSES[loss_name]
    g = torch.Generator().manual_seed(seed)
    weights = tuple(torch.randn(2, heads, o, i, generator=g, dtype=torch.float64)
                    for o, i in layout.layers)
    u = torch.randn(2, heads, steps, layout.widths[0], generator=g, dtype=torch.float64)
    v = torch.randn(2, heads, steps, layout.widths[-1], generator=g, dtype=torch.float64)
    inputs, pre = [], []
    y = batched_forward(layout, weights, u, inputs, pre)
    deltas = torch.autograd.grad(loss(y, v).sum(), pre)
    ours = [d.unsqueeze(-1) * a.unsqueeze(-2) for d, a in zip(deltas, inputs)]  # [B, H, L, o, i]

    def one(ws, u_t, v_t):                # one token, one head: ws [o, i] per layer
        h = u_t
        for i, w in enumerate(ws):
            h = w @ h
            h = mlp.ACTIVATIONS[layout.activation](h) if i < len(ws) - 1 else h
        return loss(h + u_t if layout.residual else h, v_t)

    per_token = vmap(grad(one), in_dims=(None, 0, 0))                    # over the tokens
    per_head = vmap(per_token, in_dims=(0, 0, 0))                        # over the heads
    theirs = vmap(per_head, in_dims=(0, 0, 0))(weights, u, v)            # over the batch
    for i, (a, b) in enumerate(zip(ours, theirs)):
        scale = max(b.abs().max().item(), 1.0)
        assert (a - b).abs().max().item() <= 64 * U64 * scale * max(layout.widths), f"layer {i}"


@pytest.mark.parametrize("autocast", [pytest.param(False, id="float32"),
                                      pytest.param(True, id="bfloat16-autocast")])
def test_titans_stays_finite_over_4096_tokens(autocast):
    """Default initialisation and hyper-parameters (titans-pytorch turns NaN at this length):
    outputs, the final memory and every gradient finite."""
    torch.manual_seed(0)
    m = compile_module("titans", dim=16, heads=2, head_dim=8)
    x = torch.randn(1, 4096, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y, state = m(x)
        loss = y.float().square().mean()
    loss.backward()
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(w).all() for w in state["memory"]["M"])
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("checkpoint", [pytest.param(False, id="kept"),
                                        pytest.param(True, id="checkpoint")])
def test_checkpoint_keeps_no_per_token_hidden_activations(checkpoint):
    """What the backward pass keeps: without `checkpoint`, every token's hidden activations
    (width 4 head_dim, the memory's inner layer: its factors and reads); with it, none of them
    outside the chunks it recomputes (only start states, gates and contexts)."""
    hidden = 4 * 4                                   # mlp(head_dim -> 4 head_dim -> head_dim)
    m = build("titans", "chunked", heads=2, chunk_size=3, checkpoint=checkpoint)
    widths = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: widths.append(t.shape) or t,
                                                  lambda t: t):
        y, _ = m(inputs(2, 9, 8, 3))
    per_token_hidden = [s for s in widths if len(s) >= 2 and s[-1] == hidden and 9 * 2 * 2 <=
                        s[:-1].numel()]
    assert bool(per_token_hidden) != checkpoint, per_token_hidden
