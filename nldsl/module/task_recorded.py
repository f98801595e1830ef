"""Recorded task states in the task driver (module/taskgrad.py does the products).

Without outer gradients, a task state read only through its level's frozen products
(`taskgrad.recordable`) is no autograd leaf: the backward keeps each product's
(u, dL/d(u W^T)), and at the level's write the segment sums and the gd step are one fused GEMM
per layer over all the period's tokens (`taskgrad.write`); a call that ends inside the period
folds them into the pending sum (`settle`). The same sums as for a bound state, in another
order.
"""
from __future__ import annotations

import torch

from nldsl.module import taskgrad
from nldsl.module.task_state import TaskLevel, accumulate, map_state, own
from nldsl.runtime import mlp


def sinks(levels: list[TaskLevel], state,
          recorded: dict) -> list[tuple[TaskLevel, str, torch.Tensor, object]]:
    """A sink per recorded state, keyed by the tensor the module will see: an MLP's weights
    become the layer views of one flat tensor, which the module's state conversion hands on
    as it is (mlp.flatten), so the frozen form's products find it."""
    found = []
    for tl in levels:
        levelstate = own(state, tl.block)[tl.level.name]
        for name, layout in recorded.get(id(tl), {}).items():
            value = (mlp.flatten(layout, levelstate[name]) if layout else levelstate[name]).detach()
            levelstate[name] = mlp.layers(layout, value) if layout else value
            found.append((tl, name, value, taskgrad.Sink()))
    return found


def recordable(blocks: dict, levels: list[TaskLevel]) -> dict[int, dict]:
    """id of a task level -> {state: its MLP layout or None} for the states whose gradient the
    frozen form's products give whole (`taskgrad.recordable`, which each module computes at
    construction); `blocks` maps a block's key to its compiled module."""
    return {id(tl): {name: tl.level.states[name].mlp
                     for name in blocks[tl.block].recordable[tl.level.name]} for tl in levels}


def settle(state, tl: TaskLevel, recorded: dict, folded: dict, write: bool = False) -> None:
    """A recorded state's gradient since its last write, summed from its records (one GEMM per
    layer for all the tokens): at a write with no pending sum from an earlier call, the written
    state itself (taskgrad.write); else into its pending sum, as a bound state's is
    (`task_state.accumulate`)."""
    levelstate = own(state, tl.block)[tl.level.name]
    for name, layout in recorded.get(id(tl), {}).items():
        tokens, records = folded.pop((id(tl), name), (0, []))
        if not tokens:
            continue
        theta = levelstate[name]
        if write and f"{name}.pending" not in levelstate:
            beta = 1 + tokens * (tl.decay[name] - 1)
            levelstate[name] = taskgrad.write(layout, theta, records, tl.lr[name], beta)
            continue
        grads = taskgrad.fold(records, len(layout.layers) if layout else 1)
        grad = map_state(torch.zeros_like, theta) if grads is None else \
            (tuple(grads) if layout else grads[0])
        accumulate(levelstate, name, theta, grad, tokens, tl)
