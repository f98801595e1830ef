"""Outer training in windows: truncated backpropagation through a stream, with memory bounded by
the window instead of the sequence (issue 11 §1).

    y, state, total = nldsl.stream_windows(model, inputs, targets, window=W, loss=loss)

`nldsl.stream` with gradients on keeps the graph of the whole call until the caller's backward,
so the memory of the outer backward pass grows with T (every segment's activations, and with
`backprop` task levels every inner write's second-order graph). This driver cuts the stream
into windows of about W tokens, [0, W), [W, 2W), ..., each window's end moved on to the next
segment end (a task write of the network) where it falls inside one: per window it runs
`nldsl.stream` from the state the previous window left (the same forward values as one call: a
stream cut into calls computes what one call does, and no segment straddles two windows), takes
the window's loss L_w = loss(y_w, targets_w), calls `(scale * L_w).backward()`, which adds its
gradient to every parameter's `.grad`, and detaches the state before the next window. So

    grad = sum_w d L_w / d params,  with the states entering window w taken as constants:

truncated backpropagation through time at the window boundaries, the rule of Titans' and TTT's
training. The gradient of L_w reaches the learned initial states (`init learned`) only through
the first window, and the projections through the writes of its own window only; inside a window
nothing is truncated (second order through the writes unless `through_writes=False`). A window
as long as the sequence is the exact gradient of `nldsl.stream`.

Memory: after each window's backward its graph is freed (no tensor saved for backward survives
a window boundary, tests/test_module_task_window.py counts them), so the backward pass holds
at most one window's graph whatever T.
"""
from __future__ import annotations

import torch

from nldsl.module.reference import STREAM
from nldsl.module.task import default_loss, segment_ends, stream, task_levels
from nldsl.module.task_state import own


def stream_windows(model, inputs: torch.Tensor, targets: torch.Tensor, state=None, *,
                   window: int, loss=None, scale: float = 1.0, through_writes: bool = True,
                   end: bool = True):
    """Run `model` on `inputs` [B, T, ...] in windows of `window` tokens, each window's loss
    `loss(y, targets)` (a sum over its tokens, as for `nldsl.stream`; nldsl.lm's default is the
    summed next-token cross-entropy) backpropagated by `(scale * L_w).backward()` before the
    next window, the state detached between windows. Call it with gradients on (outer training)
    and zero the gradients before. Returns (outputs [B, T, ...] detached, the final state
    detached, the sum of the windows' losses detached)."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int (tokens), got {window!r}")
    if not torch.is_grad_enabled():
        raise RuntimeError("nldsl.stream_windows backpropagates each window's loss: call it "
                           "with gradients on (under torch.no_grad() use nldsl.stream)")
    loss = loss if loss is not None else default_loss(model)
    steps = inputs.shape[1]
    outputs, total = [], inputs.new_zeros((), dtype=torch.float64)
    for a, b in _windows(model, state, steps, window):
        y, state = stream(model, inputs[:, a:b], targets[:, a:b], state, loss=loss,
                          end=end and b == steps, through_writes=through_writes)
        part = loss(y, targets[:, a:b])
        if part.requires_grad:
            (scale * part).backward()
        state = detach_state(state)
        outputs.append(y.detach())
        total = total + part.detach().double()
    return torch.cat(outputs, dim=1), state, total


def _windows(model, state, steps: int, window: int) -> list[tuple[int, int]]:
    """[a, b) per window: b the first segment end (`task.segment_ends`: a task write of the
    network, or the end) at least `window` tokens after a. A window's end inside a segment
    would detach what the next call's part of the segment differentiates through (a written
    level, conv or attention that read a task level before it: task.py), and change the
    forward values."""
    levels = task_levels(model)
    start = own(state, levels[0].block)[STREAM]["t"] if state is not None and levels else 0
    ends = segment_ends(levels, start, steps) if levels else range(1, steps + 1)
    bounds, a = [], 0
    for b in ends:
        if b - a >= window or b == steps:
            bounds.append((a, b))
            a = b
    return bounds or [(0, 0)]


def detach_state(state):
    """The state with every tensor detached (a dict of levels, a list of blocks' states, an MLP
    memory's tuple of weights; other entries, such as the stream's token count, as they are)."""
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, dict):
        return {key: detach_state(value) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(detach_state(value) for value in state)
    return state
