"""Outer training in windows (nldsl/module/task_window.py): truncated backpropagation through
the stream, with the backward pass's memory bounded by the window, whatever T."""
from __future__ import annotations

import weakref

import pytest
import torch

import nldsl
from nldsl.module.task_window import detach_state
from test_module_task import DOWNSTREAM_BACKPROP

DIM = 6


def cms(seed=0):
    torch.manual_seed(seed)
    return nldsl.compile("cms", dim=DIM, expansion=2, period_slow=8, period_mid=4,
                         period_fast=2, lr_slow=0.01, lr_mid=0.02, lr_fast=0.03).double()


def squared(y, target):
    return ((y - target) ** 2).sum()


def data(steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, steps, DIM, generator=g, dtype=torch.float64)
    return x, torch.randn(2, steps, DIM, generator=g, dtype=torch.float64)


def grads(m):
    return {name: p.grad.clone() for name, p in m.named_parameters() if p.grad is not None}


def full_gradient(m, x, target):
    m.zero_grad()
    y, _ = nldsl.stream(m, x, target, loss=squared)
    squared(y, target).backward()
    return y.detach(), grads(m)


def windowed(m, x, target, window):
    m.zero_grad()
    y, state, total = nldsl.stream_windows(m, x, target, window=window, loss=squared)
    return y, state, total, grads(m)


def assert_close(a: dict, b: dict, tol):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=tol, atol=tol, msg=name)


# float64, a few hundred operations per value: rounding ~1e-13
TOL = 1e-10


def test_a_window_as_long_as_the_stream_is_the_exact_gradient():
    m = cms()
    x, target = data(20)
    y_full, g_full = full_gradient(m, x, target)
    y, _, total, g = windowed(m, x, target, window=20)
    torch.testing.assert_close(y, y_full, rtol=TOL, atol=TOL)
    torch.testing.assert_close(total, squared(y_full, target), rtol=TOL, atol=TOL)
    assert_close(g, g_full, TOL)


@pytest.mark.parametrize("window, ends", [(4, [4, 8, 12, 16, 19]), (5, [6, 12, 18, 19]),
                                          (8, [8, 16, 19])],
                         ids=["window-4", "window-5-ends-on-writes", "window-8"])
def test_windows_are_the_stream_cut_into_calls_with_the_states_taken_as_constants(window, ends):
    """Each window ends at the first task write (periods 2/4/8: every other token) at least
    `window` tokens on."""
    m = cms()
    x, target = data(19)
    y_full, _ = full_gradient(m, x, target)
    y, state, total, g = windowed(m, x, target, window)
    torch.testing.assert_close(y, y_full, rtol=TOL, atol=TOL)        # forward values unchanged
    m.zero_grad()
    carried, parts = None, []
    for a, b in zip([0] + ends[:-1], ends):
        part, carried = nldsl.stream(m, x[:, a:b], target[:, a:b], carried, loss=squared,
                                     end=b == 19)
        squared(part, target[:, a:b]).backward()
        carried = detach_state(carried)
        parts.append(part.detach())
    assert_close(g, grads(m), TOL)
    torch.testing.assert_close(total, squared(torch.cat(parts, 1), target).double(),
                               rtol=TOL, atol=TOL)
    for level, values in carried.items():
        if isinstance(values, dict):
            for name, value in values.items():
                if isinstance(value, torch.Tensor):
                    torch.testing.assert_close(state[level][name], value, rtol=TOL, atol=TOL)


def test_truncation_cuts_the_learned_initial_states_gradient_from_later_windows():
    m = cms()
    x, target = data(16)
    _, g_full = full_gradient(m, x, target)
    *_, g = windowed(m, x, target, window=4)
    inits = [name for name in g if "_init" in name]     # theta_<level>_init_w<layer>
    assert inits, sorted(g)
    differs = [name for name in inits
               if (g[name] - g_full[name]).abs().max() > 1e-6 * g_full[name].abs().max()]
    assert differs, "truncation at the windows changed no initial state's gradient"


class SavedBytes:
    """The bytes of the tensors autograd holds for backward, live and at their peak."""

    def __init__(self):
        self.live = self.peak = 0

    def pack(self, tensor):
        box = _Box(tensor)
        size = tensor.numel() * tensor.element_size()
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(box, self._free, size)   # when autograd frees the graph holding it
        return box

    def _free(self, size):
        self.live -= size

    @staticmethod
    def unpack(box):
        return box.value


class _Box:
    def __init__(self, value):
        self.value = value


def peak_saved(run):
    saved = SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
        run()
    return saved


@pytest.mark.parametrize("steps", [16, 48], ids=["T16", "T48"])
def test_the_backward_memory_is_one_windows_whatever_the_length(steps):
    m = cms()
    x, target = data(steps)

    def whole():
        y, _ = nldsl.stream(m, x, target, loss=squared)
        squared(y, target).backward()

    def in_windows():
        nldsl.stream_windows(m, x, target, window=8, loss=squared)

    short_x, short_target = data(16)
    reference = peak_saved(lambda: nldsl.stream_windows(m, short_x, short_target, window=8,
                                                        loss=squared))
    windows, plain = peak_saved(in_windows), peak_saved(whole)
    assert windows.live == 0                    # nothing survives the last window's backward
    # the peak is one window's graph: the same at T 16 and T 48 (to the window's contents)
    assert windows.peak <= 1.05 * reference.peak
    if steps == 48:
        assert plain.peak > 2.5 * windows.peak  # the whole call's graph: three times as long


def test_bad_windows_are_refused():
    m = cms()
    x, target = data(4)
    with pytest.raises(ValueError, match="window must be a positive int"):
        nldsl.stream_windows(m, x, target, window=0, loss=squared)
    with torch.no_grad(), pytest.raises(RuntimeError, match="with gradients on"):
        nldsl.stream_windows(m, x, target, window=2, loss=squared)


def test_a_window_never_ends_inside_a_segment():
    """A memory that reads the task level's read carries the segment's path to A across a
    call's end (task.py); a window ending at token 2 of A's period would detach it and change
    the forward values. Windows of 2 end on A's writes (4, 8) instead: the one stream's values."""
    torch.manual_seed(0)
    m = nldsl.compile(DOWNSTREAM_BACKPROP).double()
    x, target = (torch.randn(2, 10, 3, dtype=torch.float64,
                             generator=torch.Generator().manual_seed(s)) for s in (2, 3))
    y_full, _ = full_gradient(m, x, target)
    y, state, *_ = windowed(m, x, target, window=2)
    torch.testing.assert_close(y, y_full, rtol=TOL, atol=TOL)
