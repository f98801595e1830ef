"""module/chain_chunk.py: Atlas (the Omega rule's window, `momentum then newton_schulz then gd`)
in the chunked schedule equals the reference schedule.

Outputs, final states (weights, momentum by layer, the chunk-start snapshot, the window's ring
buffers of k, v and gamma) and the gradients of x and of every parameter, float64, lengths that
no chunk size divides, windows shorter and longer than the chunk, a stream cut inside a window,
and the variants the recogniser takes (no window, no chain, ema, a `before write` read).
Tolerance: tests/test_module_deep_memories.py's Atlas bound, `deep_bound` times 4^k for k
Newton-Schulz steps (each step amplifies a rounding of its input at most 4x).
"""
from __future__ import annotations

import pytest
import torch

from _module_cases import assert_close, assert_states_close, build, flat_layers, forbid_fallback, \
    inputs, randomize, stream_in_parts
from nldsl.lower.chain_forms import ChainForm
from nldsl.module import chain_chunk
from nldsl.module import compile as compile_module

from test_module_deep_chunk import USER_SPEC
from test_module_deep_memories import deep_bound
from test_module_snapshot_chunk import assert_schedules_agree

SOURCE = open("nldsl/stdlib/atlas.nl").read()
RULE = "by momentum(lr = 1, beta = theta) then newton_schulz(ns_steps) then gd(lr = eta, " \
       "decay = alpha)"
OBJECTIVE = "minimize window(window_size, l2(M(k), v), gamma)"
#: the other structures the form takes, as edits of atlas.nl
VARIANTS = {
    "window-gd": (RULE, "by gd(lr = eta, decay = alpha)"),
    "no-window": (OBJECTIVE, "minimize l2(M(k), v)"),
    "ema": (RULE, "by ema(beta = theta) then newton_schulz(ns_steps) then gd(lr = eta, "
                  "decay = alpha)"),
    "momentum-gd": (RULE, "by momentum(lr = 0.5, beta = theta) then gd(lr = eta, decay = alpha)"),
    "before-write": ("read y = M(q)", "read y = M(q) before write"),
    "no-gamma": (OBJECTIVE, "minimize window(window_size, l2(M(k), v))"),
    "no-heads": ("chunk chunk_size heads heads backprop", "chunk chunk_size backprop"),
}
#: the no-heads variant's state shapes: one head of width head_dim, scalar gates
NO_HEADS = {"heads * head_dim": "head_dim", "[dim, heads]": "[dim]"}
HP = dict(dim=8, head_dim=4, max_lr=0.5, heads=2)


def both(spec="atlas", **overrides):
    return tuple(build(spec, s, seed=3, **{"heads": 2, **overrides})
                 for s in ("reference", "chunked"))


def bound(m, steps: int) -> float:
    return deep_bound(steps, 4 * 4) * 4 ** m.program.hparams.get("ns_steps", 0)


def variant(name: str, schedule: str, **overrides):
    source = SOURCE
    for old, new in [VARIANTS[name]] + (list(NO_HEADS.items()) if name == "no-heads" else []):
        assert old in source
        source = source.replace(old, new)
    torch.manual_seed(3)
    m = compile_module(source, schedule=schedule,
                       **{**HP, "chunk_size": 3, "window_size": 3, **overrides})
    return randomize(m.to(torch.float64), 3)


@pytest.mark.parametrize("steps, chunk, window, batch", [
    pytest.param(11, 3, 2, 2, id="T11-chunk3-window2"),
    pytest.param(13, 4, 6, 1, id="T13-chunk4-window6-longer-than-chunk"),
    pytest.param(9, 5, 5, 2, id="T9-chunk5-window5"),
    pytest.param(7, 8, 3, 2, id="T7-chunk8-longer-than-T"),
    # (not T 1: one window term, S_1 = gamma_1 g_1, and NS(c S) = NS(S), so W_gamma's gradient
    # is 0 up to rounding in both schedules and no relative bound compares it)
    pytest.param(2, 3, 3, 1, id="T2"),
])
def test_atlas_chunked_equals_reference(steps, chunk, window, batch, monkeypatch):
    reference, chunked = both(chunk_size=chunk, window_size=window)
    assert isinstance(chunked.fast_paths["memory"], ChainForm)
    forbid_fallback(monkeypatch)
    x = inputs(batch, steps, reference.program.dim, 1).requires_grad_()
    state = assert_schedules_agree(reference, chunked, x, bound(reference, steps))
    assert {"memory.M_momentum.0", "memory.k.window.0", "memory.gamma.window.0"} <= set(state)


def test_atlas_polynomial_chunked_equals_reference(monkeypatch):
    """examples/atlas_polynomial.nl: the degree-2 feature map, a memory without residual."""
    reference, chunked = both("atlas_polynomial")
    assert isinstance(chunked.fast_paths["memory"], ChainForm)
    forbid_fallback(monkeypatch)
    x = inputs(2, 8, reference.program.dim, 2).requires_grad_()
    assert_schedules_agree(reference, chunked, x, bound(reference, 8))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variants_chunked_equal_reference(name, monkeypatch):
    reference, chunked = (variant(name, s) for s in ("reference", "chunked"))
    assert isinstance(chunked.fast_paths["memory"], ChainForm)
    forbid_fallback(monkeypatch)
    x = inputs(2, 10, reference.program.dim, 4).requires_grad_()
    assert_schedules_agree(reference, chunked, x, bound(reference, 10))


@pytest.mark.parametrize("cuts", [pytest.param((5,), id="mid-chunk"),
                                  pytest.param((1, 2, 9), id="inside-the-first-window"),
                                  pytest.param((4, 8), id="at-chunk-starts")])
def test_a_cut_stream_equals_the_reference(cuts, monkeypatch):
    """The window's past keys, values and gammas and the chunk-start snapshot travel in the
    state: the chunked schedule on a cut stream computes the reference's one call."""
    reference, chunked = both(chunk_size=4, window_size=5)
    forbid_fallback(monkeypatch)
    x = inputs(2, 11, reference.program.dim, 5)
    with torch.no_grad():
        y, whole = reference(x, end=False)
        y_cut, cut = stream_in_parts(chunked, x, cuts)
    assert_close(y_cut, y, bound(reference, 11), "y")
    assert_states_close(flat_layers(cut), flat_layers(whole), bound(reference, 11), "")


def test_no_grad_and_checkpoint_give_the_same_values(monkeypatch):
    """Without autograd the factors are detached; with `checkpoint` each chunk is recomputed in
    the backward pass: outputs and gradients are the plain run's."""
    _, plain = both(chunk_size=3, window_size=4)
    torch.manual_seed(3)
    kept = build("atlas", "chunked", seed=3, heads=2, chunk_size=3, window_size=4,
                 checkpoint=True)
    forbid_fallback(monkeypatch)
    x = inputs(2, 8, plain.program.dim, 6)
    with torch.no_grad():
        y0, _ = plain(x)
    assert not y0.requires_grad
    ys, grads = [], []
    for m in (plain, kept):
        y, _ = m(x)
        ys.append(y)
        grads.append(torch.autograd.grad(y.square().sum(), list(m.parameters())))
    eps = bound(plain, 8)
    assert_close(y0, ys[0].detach(), eps, "no_grad y")
    assert_close(ys[1], ys[0], eps, "checkpoint y")
    for (name, _), a, b in zip(plain.named_parameters(), grads[1], grads[0]):
        assert_close(a, b, eps, f"checkpoint grad {name}")


def test_newton_schulz_in_groups_gives_the_same_values(monkeypatch):
    """Newton-Schulz runs in cache-sized groups of matrices (`GROUP_BYTES`); one matrix per
    group computes what one group of all does (the groups are independent matrices)."""
    _, m = both(chunk_size=4, window_size=3)
    forbid_fallback(monkeypatch)
    x = inputs(2, 9, m.program.dim, 7)
    with torch.no_grad():
        y, state = m(x)
        monkeypatch.setattr(chain_chunk, "GROUP_BYTES", 1)
        y1, state1 = m(x)
    assert_close(y1, y, bound(m, 9), "y")
    assert_states_close(flat_layers(state1), flat_layers(state), bound(m, 9), "")


@pytest.mark.parametrize("backprop", [pytest.param(True, id="backprop"),
                                      pytest.param(False, id="detached-writes")])
@pytest.mark.parametrize("change", [
    pytest.param(("by gd(", "by momentum(lr = 1, beta = 0.5) then newton_schulz(2) then gd("),
                 id="chain"),
    pytest.param(("minimize lp(Net(a), b, 2)", "minimize window(3, lp(Net(a), b, 2))"),
                 id="window"),
])
def test_a_user_spec_with_a_chain_or_a_window_takes_the_form(change, backprop, monkeypatch):
    """test_module_deep_chunk.py's user spec (other names, an lp loss, tanh, no residual, a
    constant decay, reads before and after the write) with a chain or a window. Without
    `backprop` the writes are constants for the outer gradient in both schedules."""
    source = USER_SPEC.replace(*change)
    source = source if backprop else source.replace(" backprop {", " {")
    torch.manual_seed(0)
    reference, chunked = (compile_module(source, schedule=s, dim=5).double()
                          for s in ("reference", "chunked"))
    chunked.load_state_dict(reference.state_dict())
    assert isinstance(chunked.fast_paths["fast"], ChainForm)
    forbid_fallback(monkeypatch)
    x = inputs(2, 9, 5, 3).requires_grad_()
    assert_schedules_agree(reference, chunked, x, deep_bound(9, 12) * 4 ** 2)


def test_checkpoint_without_a_window_gives_the_same_gradients(monkeypatch):
    """Without a window the loss is evaluated over the call's own tokens (its contexts made
    before the checkpointed chunks, `prepare`); the gradients are the plain run's."""
    plain, kept = variant("no-window", "chunked"), variant("no-window", "chunked", checkpoint=True)
    forbid_fallback(monkeypatch)
    x = inputs(2, 8, plain.program.dim, 8)
    grads = [torch.autograd.grad(m(x)[0].square().sum(), list(m.parameters()), allow_unused=True)
             for m in (plain, kept)]                   # W_gamma: unused without a window
    for (name, _), a, b in zip(plain.named_parameters(), grads[1], grads[0]):
        assert (a is None) == (b is None), name
        if b is not None:
            assert_close(a, b, bound(plain, 8), f"checkpoint grad {name}")
