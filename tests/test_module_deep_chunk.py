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

from _module_cases import assert_close, build, forbid_fallback, inputs
from nldsl.lower.deep_forms import DeepForm
from nldsl.module import compile as compile_module
from test_module_deep_memories import deep_bound

CASES = [
    pytest.param("titans", 7, 3, 2, id="titans-T7-chunk3-B2"),
    pytest.param("titans", 10, 4, 3, id="titans-T10-chunk4-B3"),
    pytest.param("titans", 1, 3, 1, id="titans-T1-B1"),
    pytest.param("yaad", 8, 3, 2, id="yaad-T8-chunk3-B2"),
]


def both(spec, chunk, seed=1, **overrides):
    return [build(spec, schedule, heads=2, chunk_size=chunk, seed=seed, **overrides)
            for schedule in ("reference", "chunked")]


def flat(state):
    out = {}
    for level, own in state.items():
        for name, value in own.items():
            for i, v in enumerate(value if isinstance(value, tuple) else (value,)):
                out[f"{level}.{name}.{i}"] = v
    return out


@pytest.mark.parametrize("spec, steps, chunk, batch", CASES)
def test_chunked_equals_reference(spec, steps, chunk, batch, monkeypatch):
    reference, chunked = both(spec, chunk)
    assert isinstance(chunked.fast_paths["memory"], DeepForm)
    forbid_fallback(monkeypatch)
    x = inputs(batch, steps, 8, 1).requires_grad_()
    bound = deep_bound(steps, 16)
    outputs = {}
    for name, m in (("reference", reference), ("chunked", chunked)):
        y, state = m(x)
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum()
        grads = torch.autograd.grad(loss, [x] + list(m.parameters()))
        outputs[name] = (y, flat(state), grads)
    (y_r, s_r, g_r), (y_c, s_c, g_c) = outputs["reference"], outputs["chunked"]
    assert_close(y_c, y_r, bound, f"{spec} y")
    assert s_c.keys() == s_r.keys()
    for key in s_r:
        if isinstance(s_r[key], torch.Tensor):
            assert_close(s_c[key], s_r[key], bound, f"{spec} state {key}")
        else:
            assert s_c[key] == s_r[key], key
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
    with torch.no_grad():
        y, whole = m(x)
        parts, state, start = [], None, 0
        for stop in cuts + (9,):
            part, state = m(x[:, start:stop], state, end=False)
            parts.append(part)
            start = stop
    bound = deep_bound(9, 16)
    assert_close(torch.cat(parts, 1), y, bound, "y")
    for key, value in flat(whole).items():
        if isinstance(value, torch.Tensor):
            assert_close(flat(state)[key], value, bound, key)


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
        results.append((y, flat(state), [g if g is not None else torch.zeros(()) for g in grads]))
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
