"""module/derived_chunk.py (and lower/derived_forms.py): a level that reads through a derived
memory (Moneta's A / ||A||_q^{q-2}, Memora's c softmax(L)) runs one iteration per chunk, with
the reference schedule's values.

Outputs, final states (weights by layer, chunk-start snapshot) and the gradients of x and of
every parameter, in float64, for odd lengths, chunks that do not divide them, heads, one or
several sequences, a stream cut anywhere, checkpointed chunks, and a user spec with the same
structure under other names. Tolerance: `deep_bound` of tests/test_module_deep_memories.py
(the same real function, sums associated differently; gradients pass twice through it).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import nldsl.stdlib

from _module_cases import assert_close, assert_cut_stream_is_one_call, assert_states_close, \
    build, flat_layers, forbid_fallback, inputs, randomize
from nldsl.lower.derived_forms import DerivedForm
from nldsl.module import compile as compile_module, derived_chunk
from test_module_deep_memories import deep_bound

CASES = [
    pytest.param("moneta", 7, 3, 2, 2, False, id="moneta-T7-chunk3-B2-H2"),
    pytest.param("moneta", 10, 4, 1, 3, False, id="moneta-T10-chunk4-B1-H3"),
    pytest.param("moneta", 1, 3, 1, 2, False, id="moneta-T1"),
    pytest.param("memora", 7, 3, 2, 2, False, id="memora-T7-chunk3-B2-H2"),
    pytest.param("memora", 10, 4, 3, 1, False, id="memora-T10-chunk4-B3-H1"),
    pytest.param("moneta", 9, 4, 2, 2, True, id="moneta-T9-chunk4-checkpoint"),
    pytest.param("memora", 9, 4, 2, 2, True, id="memora-T9-chunk4-checkpoint"),
]


def both(spec, chunk, heads, seed=1, **overrides):
    return [build(spec, schedule, heads=heads, chunk_size=chunk, seed=seed, **overrides)
            for schedule in ("reference", "chunked")]


def outputs(m, x):
    """y, the final state by layer, and the gradients of x and every parameter of a loss that
    weighs each output differently."""
    y, state = m(x)
    loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum()
    grads = torch.autograd.grad(loss, [x] + list(m.parameters()))
    return y, flat_layers(state), grads


def assert_agree(reference, chunked, x, bound, what):
    (y_r, s_r, g_r), (y_c, s_c, g_c) = outputs(reference, x), outputs(chunked, x)
    assert_close(y_c, y_r, bound, f"{what} y")
    assert_states_close(s_c, s_r, bound, what)
    names = ["x"] + [n for n, _ in reference.named_parameters()]
    assert len(g_c) == len(names)
    assert all(g.abs().sum() > 0 for g in g_r), [n for n, g in zip(names, g_r) if not g.any()]
    for name, a, b in zip(names, g_c, g_r):
        assert_close(a, b, 2 * bound, f"{what} grad {name}")


@pytest.mark.parametrize("spec, steps, chunk, batch, heads, checkpoint", CASES)
def test_chunked_equals_reference(spec, steps, chunk, batch, heads, checkpoint, monkeypatch):
    """Moneta's W = A / g (g a number per matrix) reads through the scaled masked sums, Memora's
    c softmax(L) through every token's materialised weights."""
    reference, chunked = both(spec, chunk, heads, checkpoint=checkpoint)
    form = chunked.fast_paths["memory"]
    assert isinstance(form, DerivedForm) and set(form.scales) == ({"W"} if spec == "moneta"
                                                                  else set())
    forbid_fallback(monkeypatch)
    x = inputs(batch, steps, 8, 1).requires_grad_()
    assert_agree(reference, chunked, x, deep_bound(steps, 16), spec)


@pytest.mark.parametrize("spec", ["moneta", "memora"])
@pytest.mark.parametrize("cuts", [pytest.param((2, 5), id="mid-chunk"),
                                  pytest.param((3, 6), id="chunk-boundaries"),
                                  pytest.param((1, 2, 3, 4, 5, 6, 7, 8), id="every-token")])
def test_a_cut_stream_equals_one_call(spec, cuts, monkeypatch):
    """The chunk-start snapshot travels in the state, so a cut anywhere continues the chunk."""
    _, m = both(spec, 3, 2)
    forbid_fallback(monkeypatch)
    x = inputs(2, 9, 8, 2)
    assert_cut_stream_is_one_call(m, x, cuts, deep_bound(9, 16))


USER_SPEC = '''module mirror(dim: int >= 1, width = 3 >= 1, p = 3 >= 1) {
  state P_in : [dim, 2 * width] = normal(0.3)
  state P_out : [dim, 2 * width] = normal(0.3)
  state P_lr : [dim, 2] = normal(0.3)
  state P_beta : [dim, 2] = normal(0.3)
  state Back : [2 * width, dim] = normal(0.3)
  level fast every 1 token chunk 4 heads 2 backprop {
    state Dual : mlp(width -> 2 * width -> width, tanh) init learned
    let   Primal = 2 * softmax(Dual) - Dual / sum(transpose(sum(Dual * Dual)))
    let   Through = stopgrad(Primal - Dual) + Dual
    key   a = x @ P_in
    value b = x @ P_out
    gate  rate = 0.3 * sigmoid(x @ P_lr)
    gate  keep = sigmoid(x @ P_beta)
    minimize lp(Through(a), b, p) by momentum(lr = rate, beta = keep, decay = 0.9)
    read r = Primal(a) * 2 before write
    read o = Primal(b) + Dual(a)
  }
  out = (r + o) @ Back
}
'''


def without_heads(spec: str) -> str:
    """USER_SPEC with one memory per sequence: no `heads`, widths of one head, scalar gates."""
    for old, new in ((" heads 2", ""), ("2 * width", "width"), ("[dim, 2]", "[dim]"),
                     ("x @ P_lr", "dot(x, P_lr)"), ("x @ P_beta", "dot(x, P_beta)")):
        spec = spec.replace(old, new)
    return spec


@pytest.mark.parametrize("heads", [pytest.param(True, id="heads"),
                                   pytest.param(False, id="no-heads")])
@pytest.mark.parametrize("steps", [pytest.param(6, id="T6"), pytest.param(9, id="T9")])
def test_a_user_spec_with_the_structure_takes_the_form(tmp_path, steps, heads, monkeypatch):
    """Other names, a straight-through let written the other way round, a momentum rule, a
    constant decay, reads of the derived memory before and after the write and of the state
    itself: the structure is the form, so the chunked schedule takes it."""
    path = tmp_path / "mirror.nl"
    path.write_text(USER_SPEC if heads else without_heads(USER_SPEC))
    modules = []
    for schedule in ("reference", "chunked"):
        torch.manual_seed(0)
        modules.append(randomize(compile_module(str(path), schedule=schedule, dim=5).double(), 3))
    form = modules[1].fast_paths["fast"]
    assert isinstance(form, DerivedForm) and form.trained == "Through" and form.beta is not None
    assert {memory for memory, _, _ in form.queries.values()} == {"Primal", "Dual"}
    forbid_fallback(monkeypatch)
    x = inputs(2, steps, 5, 3).requires_grad_()
    assert_agree(modules[0], modules[1], x, deep_bound(steps, 16), "mirror")


def test_no_grad_values_equal_the_graph_values(monkeypatch):
    """Without autograd the form detaches per chunk; the values are the same."""
    _, m = both("memora", 3, 2)
    forbid_fallback(monkeypatch)
    x = inputs(2, 7, 8, 3)
    y, _ = m(x)
    with torch.no_grad():
        y0, _ = m(x)
    assert not y0.requires_grad
    assert_close(y0, y.detach(), deep_bound(7, 16), "y")


@pytest.mark.parametrize("loss, form", [
    pytest.param("lp(W_st(k), v, bias_p)", True, id="straight-through"),
    pytest.param("lp(W(k), v, bias_p)", False, id="chain-rule-through-f"),
    pytest.param("lp(W_st(k), v, bias_p) + l2(W_st(q), v)", False, id="two-inputs"),
])
def test_only_a_straight_through_loss_takes_the_form(tmp_path, loss, form):
    """A loss at f(A) itself differentiates through f: its gradient with respect to A is not
    the rank-one sum the form writes, so that level runs the reference (as one whose loss
    applies the memory to two inputs)."""
    text = (Path(nldsl.stdlib.__file__).parent / "moneta.nl").read_text().replace("lp(W_st(k), v, bias_p)", loss)
    spec = tmp_path / "variant.nl"
    spec.write_text(text)
    m = compile_module(str(spec), schedule="chunked", dim=8, heads=2, head_dim=4, chunk_size=3)
    assert isinstance(m.fast_paths.get("memory"), DerivedForm) is form


@pytest.mark.parametrize("scale, materialised", [
    pytest.param("(norm(A) + eps)", True, id="row-norms"),
    pytest.param("(sum(abs(A)) + eps)", True, id="row-sums"),
    pytest.param("(2 + 0 * eps)", False, id="a-number"),
])
def test_a_scale_that_is_not_one_number_per_matrix_materialises_the_weights(
        tmp_path, scale, materialised, monkeypatch):
    """W = A / g with g per row (a column of each matrix) is not the scaled read: its weights
    are materialised per token instead; a constant g is (no state in it). Same values."""
    text = (Path(nldsl.stdlib.__file__).parent / "moneta.nl").read_text()
    start = text.index("let   W = ") + len("let   W = ")
    end = text.index("\n", start)
    spec = tmp_path / "variant.nl"
    spec.write_text(text[:start] + f"A / {scale}" + text[end:])
    made = []
    for schedule in ("reference", "chunked"):
        torch.manual_seed(2)
        made.append(randomize(compile_module(str(spec), schedule=schedule, dim=8, heads=2,
                                             head_dim=4, chunk_size=3, max_lr=0.5).double(), 2))
    assert "W" in made[1].fast_paths["memory"].scales
    forbid_fallback(monkeypatch)
    used = []
    per_token = derived_chunk._forward_per_token
    monkeypatch.setattr(derived_chunk, "_forward_per_token",
                        lambda *args: used.append(1) or per_token(*args))
    x = inputs(2, 7, 8, 4).requires_grad_()
    assert_agree(made[0], made[1], x, deep_bound(7, 16), scale)
    assert bool(used) is materialised
