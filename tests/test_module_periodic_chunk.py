"""module/periodic_chunk.py: the periodic form of a `once` level equals the reference schedule.

Outputs, final states (weights by layer, momentum, chunk-start snapshot, pending sums) and the
gradients of x and of every parameter, in float64, for titans_pytorch (heads 2 and 3) and
titans_pytorch_single_head in both gradient-base modes (batch_size 0: every gradient at the
initial weights; batch_size a multiple of the chunk), odd T and T that the period does not
divide, a stream cut anywhere, and a user spec of the same structure under other names (the
gradient rule, no `layernorm`, a chunk of two periods and the default chunk (one period),
`partial flush`, without `backprop`, without heads). Tolerance: `deep_bound` of
tests/test_module_deep_memories.py (the same real function, sums associated differently);
gradients pass twice through it.
"""
from __future__ import annotations

import pytest
import torch

import nldsl
from _module_cases import assert_close, assert_states_close, flat_layers, forbid_fallback, \
    inputs, randomize, stream_in_parts
from nldsl.lower.periodic_forms import PeriodicForm
from test_module_deep_memories import deep_bound

USER = """module periodic_user(dim: int >= 1, head_dim = 3 >= 1) {{
  state Wk : [dim, {heads} * head_dim] = normal(0.5)
  state Wv : [dim, {heads} * head_dim] = normal(0.5)
  state Wq : [dim, {heads} * head_dim] = normal(0.5)
  state W_lr : [dim{gate}] = normal(0.5)
  state W_keep : [dim{gate}] = normal(0.5)
  state W_out : [{heads} * head_dim, dim] = normal(0.5)
  level memory every 4 tokens {chunk} {head_clause} {backprop} partial {partial} once {{
    state M : mlp(head_dim -> 2 * head_dim -> head_dim, silu) init learned
    key   k = x @ Wk
    value v = x @ Wv
    query q = x @ Wq
    gate  rate = sigmoid(period_mean(x @ W_lr))
    gate  keep = sigmoid(x @ W_keep)
    minimize l2(M(k), v) by gd(lr = rate, decay = keep)
    read y = M(q)
  }}
  out = y @ W_out
}}"""


def titans_pytorch(schedule: str, heads: int, chunk: int, batch_size: int):
    sizes = dict(dim=8, chunk_size=chunk, batch_size=batch_size, max_lr=0.5)
    if heads == 1:
        return nldsl.compile("titans_pytorch_single_head", schedule=schedule, **sizes)
    return nldsl.compile("titans_pytorch", schedule=schedule, heads=heads, head_dim=3, **sizes)


def user(schedule: str, heads: int | None, partial: str, backprop: bool):
    text = USER.format(heads=heads or 1, head_clause=f"heads {heads}" if heads else "",
                       chunk="chunk 8" if heads else "", gate=f", {heads}" if heads else "",
                       backprop="backprop" if backprop else "", partial=partial)
    return nldsl.compile(text, schedule=schedule, dim=8)


def pair(make, *args, seed: int = 3):
    """The module in both schedules, float64, the same O(1) parameters (_module_cases)."""
    return [randomize(make(schedule, *args).double(), seed) for schedule in ("reference",
                                                                             "chunked")]


CASES = [
    pytest.param(titans_pytorch, (2, 3, 0), 11, 2, id="titans_pytorch-heads2-chunk3-default-T11"),
    pytest.param(titans_pytorch, (2, 3, 6), 13, 2, id="titans_pytorch-heads2-chunk3-batch6-T13"),
    pytest.param(titans_pytorch, (3, 2, 4), 9, 1, id="titans_pytorch-heads3-chunk2-batch4-T9"),
    pytest.param(titans_pytorch, (2, 1, 0), 5, 2, id="titans_pytorch-heads2-chunk1-T5"),
    pytest.param(titans_pytorch, (1, 3, 0), 8, 2, id="single_head-chunk3-default-T8"),
    pytest.param(titans_pytorch, (1, 2, 4), 7, 1, id="single_head-chunk2-batch4-T7"),
    pytest.param(user, (2, "flush", True), 11, 2, id="user-heads2-flush"),
    pytest.param(user, (None, "drop", True), 9, 2, id="user-no-heads-drop"),
    pytest.param(user, (2, "flush", False), 7, 2, id="user-heads2-writes-detached"),
]


def run(m, x: torch.Tensor):
    """(y, flat state, gradients of x and every parameter) of a probe loss on y."""
    y, state = m(x)
    loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum()
    grads = torch.autograd.grad(loss, [x] + list(m.parameters()), allow_unused=True)
    return y, flat_layers(state), grads


@pytest.mark.parametrize("make, args, steps, batch", CASES)
def test_chunked_equals_reference(make, args, steps, batch, monkeypatch):
    reference, chunked = pair(make, *args)
    assert isinstance(chunked.fast_paths["memory"], PeriodicForm)
    forbid_fallback(monkeypatch)
    x = inputs(batch, steps, 8, 1).requires_grad_()
    (y_r, s_r, g_r), (y_c, s_c, g_c) = run(reference, x), run(chunked, x)
    bound = deep_bound(steps, 12)
    assert_close(y_c, y_r, bound, "y")
    assert_states_close(s_c, s_r, bound, "periodic")
    # a gradient is a sum over tokens and heads that can cancel (b_lr's: the gate's effects
    # on the loss nearly balance), so its rounding is relative to the terms, each at most the
    # largest gradient entry of the module, not to the sum
    scale = max(g.abs().max().item() for g in g_r if g is not None)
    names = ["x"] + [n for n, _ in reference.named_parameters()]
    for name, a, b in zip(names, g_c, g_r):
        assert (a is None) == (b is None), name
        if b is not None:
            assert a.shape == b.shape and torch.isfinite(a).all(), name
            error = (a - b).abs().max().item()
            assert error <= 2 * bound * scale, \
                f"grad {name}: {error:.3e} > {2 * bound:.3e} x {scale:.3e}"


@pytest.mark.parametrize("make, args, steps, batch", CASES[:3] + CASES[6:7])
def test_without_gradients(make, args, steps, batch, monkeypatch):
    """Under no_grad the chunked schedule takes its projections as one GEMM (chunked.py's
    `project`): the period means see those products too."""
    reference, chunked = pair(make, *args)
    forbid_fallback(monkeypatch)
    x = inputs(batch, steps, 8, 2)
    with torch.no_grad():
        (y_r, s_r), (y_c, s_c) = reference(x), chunked(x)
    bound = deep_bound(steps, 12)
    assert_close(y_c, y_r, bound, "y")
    assert_states_close(flat_layers(s_c), flat_layers(s_r), bound, "periodic")


CUTS = [pytest.param((2, 5), id="mid-period"), pytest.param((3, 6), id="period-ends"),
        pytest.param((1, 2, 3, 4, 5, 6, 7, 8), id="every-token")]


@pytest.mark.parametrize("end", [pytest.param(False, id="continued"),
                                 pytest.param(True, id="ended")])
@pytest.mark.parametrize("cuts", CUTS)
@pytest.mark.parametrize("make, args", [pytest.param(titans_pytorch, (2, 3, 6), id="batch6"),
                                        pytest.param(titans_pytorch, (2, 3, 0), id="default"),
                                        pytest.param(user, (2, "flush", True), id="user")])
def test_a_cut_stream_equals_the_reference(make, args, cuts, end, monkeypatch):
    """Each part a call (end=False: the pending sum, rule arguments and period means travel in
    the state; end=True: each part ends the sequence, its trailing partial period dropped or
    flushed): the chunked schedule gives the reference's outputs and states part by part."""
    reference, chunked = pair(make, *args)
    forbid_fallback(monkeypatch)
    x = inputs(2, 10, 8, 3)
    results = []
    with torch.no_grad():
        for m in (reference, chunked):
            if end:
                parts, state, start = [], None, 0
                for stop in cuts + (x.shape[1],):
                    part, state = m(x[:, start:stop], state)
                    parts.append(part)
                    start = stop
                results.append((torch.cat(parts, 1), state))
            else:
                results.append(stream_in_parts(m, x, cuts))
    (y_r, s_r), (y_c, s_c) = results
    bound = deep_bound(10, 12)
    assert_close(y_c, y_r, bound, "y")
    assert_states_close(flat_layers(s_c), flat_layers(s_r), bound, "periodic")
