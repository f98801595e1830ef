"""Recorded products (nldsl/module/taskgrad.py): the task driver's gradient of a frozen memory
as token factors. Without outer gradients nldsl.stream records the products of every task
state whose only use is its level's reads; the stream must be the one the bound states give
(the same eq. 71 sums in another order: float64, rounding only)."""
from __future__ import annotations

import gc

import pytest
import torch

import nldsl
from nldsl.module import task, taskgrad

# float64 sums of a few hundred products of O(1) numbers, in another order
TOL = 1e-12
VOCAB = 7


def network(**periods):
    torch.manual_seed(3)
    hparams = {**dict(period_slow=8, period_mid=4, period_fast=1, lr_slow=0.05, lr_mid=0.05,
                      lr_fast=0.05, expansion=2), **periods}
    return nldsl.lm("cms", vocab_size=VOCAB, dim=8, depth=2, **hparams).double()


def tokens(steps):
    stream = torch.randint(0, VOCAB, (2, steps + 1), generator=torch.Generator().manual_seed(4))
    return stream[:, :-1], stream[:, 1:]


def flat(state):
    return {(b, level, name, i): v for b, own in enumerate(state) for level, entries in own.items()
            for name, value in entries.items()
            for i, v in enumerate(value if isinstance(value, tuple) else (value,))
            if isinstance(v, torch.Tensor)}


def assert_same_stream(got, want):
    (y, state), (y_want, state_want) = got, want
    torch.testing.assert_close(y, y_want, atol=TOL, rtol=0)
    got, want = flat(state), flat(state_want)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=TOL, rtol=0, msg=str(key))


def bound_stream(monkeypatch, *args, **kwargs):
    """The stream with every task state a bound leaf (no recording)."""
    with monkeypatch.context() as patch:
        patch.setattr(task, "recordable", lambda blocks, levels: {})
        return nldsl.stream(*args, **kwargs)


def test_the_cms_levels_are_recorded():
    """Each `cms` level's MLP is read only by its level (`theta_f(h)`): recorded under the
    chunked schedule; the reference schedule has no frozen form, so nothing is."""
    for schedule, expected in (("chunked", True), ("reference", False)):
        block = nldsl.compile("cms", dim=4, expansion=2, schedule=schedule)
        for level in block.program.levels:
            names = taskgrad.recordable(block.program, level, block.fast_paths)
            assert names == (tuple(level.states) if expected else ()), (schedule, level.name)


@pytest.mark.parametrize("steps, periods", [(13, {}), (21, dict(period_fast=3, period_mid=5))],
                         ids=["periods-8-4-1-T13", "periods-8-5-3-T21"])
def test_recorded_stream_is_the_bound_stream(steps, periods, monkeypatch):
    """Outputs and states (with the pending sums of an unfinished call) equal the stream whose
    states are leaves of autograd; and the records were what the writes used."""
    model, (inputs, targets) = network(**periods), tokens(steps)
    folded = []
    fold = taskgrad.fold
    monkeypatch.setattr(taskgrad, "fold", lambda records, layers: folded.append(len(records))
                        or fold(records, layers))
    with torch.no_grad():
        for end in (True, False):
            got = nldsl.stream(model, inputs, targets, end=end)
            assert_same_stream(got, bound_stream(monkeypatch, model, inputs, targets, end=end))
    assert folded and min(folded) > 0


def test_a_module_that_skips_the_frozen_form_runs_the_segment_again(monkeypatch):
    """A recorded state the module did not read through its frozen form (here: the product
    never asked for) has no records: the driver runs the segment again with bound states."""
    model, (inputs, targets) = network(), tokens(9)
    with torch.no_grad():
        want = bound_stream(monkeypatch, model, inputs, targets)
        monkeypatch.setattr(taskgrad, "product", lambda memory: None)
        got = nldsl.stream(model, inputs, targets)
    assert_same_stream(got, want)


def test_a_recorded_product_is_the_product_and_its_gradients():
    """u @ W^T; dL/du as autograd's; sum of g^T u over the records = dL/dW (odd sizes, two
    segments of 3 and 2 tokens folded together)."""
    g = torch.Generator().manual_seed(5)
    weight = torch.randn(2, 5, 3, dtype=torch.float64, generator=g)      # [B, d_out, d_in]
    us = [torch.randn(2, n, 3, dtype=torch.float64, generator=g) for n in (3, 2)]
    sink, want_w = taskgrad.Sink(), 0
    for u in us:
        u = u.requires_grad_(True)
        with taskgrad.recording({id(weight): sink}):
            y = taskgrad.product(weight)(0, u, weight)
        w = weight.clone().requires_grad_(True)
        want_y = u @ w.mT
        grad_u, = torch.autograd.grad((y ** 3).sum(), [u])
        want_u, dw = torch.autograd.grad((want_y ** 3).sum(), [u, w])
        torch.testing.assert_close(y, want_y, atol=0, rtol=0)
        torch.testing.assert_close(grad_u, want_u, atol=TOL, rtol=0)
        want_w = want_w + dw
    assert sink.applied and len(sink.records) == 2
    (grad_w,) = taskgrad.fold(sink.records, 1)
    torch.testing.assert_close(grad_w, want_w, atol=TOL, rtol=0)


DECAYED = """module decayed(dim: int >= 1) {
  level a every 4 tokens backprop partial flush {
    state A : [dim, dim] init learned
    minimize task by gd(lr = 0.2, decay = 0.9)
    read h = A(x)
  }
  level b every 2 tokens backprop partial drop {
    state W : mlp(dim -> 2 * dim -> dim, gelu, residual) init learned by outer
    minimize task by gd(lr = 0.1, decay = 0.95)
    read y = W(h)
  }
  out = y
}
"""


@pytest.mark.parametrize("cuts", [[11], [4, 5, 11]], ids=["one-call", "cut-inside-periods"])
def test_a_decayed_write_is_the_bound_stream(cuts, monkeypatch):
    """gd(lr, decay) on a matrix and an MLP state, written straight from the records
    (beta = 1 + n (decay - 1)) or, when a call ends inside a period, through the pending sum
    the next call finishes; at T 11 A's partial period is flushed, W's dropped: the bound
    stream's values."""
    torch.manual_seed(7)
    m = nldsl.compile(DECAYED, dim=3).double()
    g = torch.Generator().manual_seed(8)
    x = torch.randn(2, 11, 3, dtype=torch.float64, generator=g)
    z = torch.randn(2, 11, 3, dtype=torch.float64, generator=g)
    loss = lambda y, target: 0.5 * ((y - target) ** 2).sum()
    runs = []
    with torch.no_grad():
        for run in (nldsl.stream, lambda *a, **k: bound_stream(monkeypatch, *a, **k)):
            ys, state, start = [], None, 0
            for stop in cuts:
                y, state = run(m, x[:, start:stop], z[:, start:stop], state, loss=loss,
                               end=stop == cuts[-1])
                ys.append(y)
                start = stop
            runs.append((torch.cat(ys, 1), [state]))
    assert_same_stream(*runs)


def test_no_record_outlives_the_stream():
    """A record keeps u and g without their graph: with u's graph it held its product's
    autograd node, which holds the sink, a cycle through C++ nodes that Python's collector
    cannot free (the memory of a stream grew with its length)."""
    model = network()
    inputs, targets = tokens(12)
    with torch.no_grad():
        nldsl.stream(model, inputs, targets)
    gc.collect()
    assert not [o for o in gc.get_objects() if type(o) is taskgrad.Sink]
