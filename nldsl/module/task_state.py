"""The task driver's view of a network's state (module/task.py): its task levels, their states
as fresh nodes to differentiate by, and the pending sum of a period's gd changes (NL eq. 71).

A state is a tensor, or an MLP memory's tuple of weights by layer: every helper maps over both.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from nldsl.lower.program import TokenLevel


@dataclass(frozen=True)
class TaskLevel:
    """A level of one block that learns from the task loss, with its rule's numbers."""

    block: object                  # the key of the block's state in the network's state
    level: TokenLevel
    lr: dict[str, float]           # state -> lr
    decay: dict[str, float]        # state -> decay
    inits: frozenset = frozenset() # its states that are a nested block's initial state (eq. 72)


def own(state, key) -> dict:
    """The state of the block `key` (None: the network is one compiled module)."""
    return state if key is None else state[key]


def node(value: torch.Tensor, graph: bool) -> torch.Tensor:
    """A view of the state when gradients flow into it from before, else a detached leaf."""
    return value.view_as(value) if graph and value.requires_grad else \
        value.detach().requires_grad_(True)


@torch.enable_grad()                # a nested CMS keeps its graph under no_grad too
def accumulate(levelstate: dict, name: str, theta, grad, tokens: int, tl: TaskLevel) -> None:
    """pending += tokens (decay - 1) theta - lr G: the segment's sum of per-token gd changes."""
    lr, decay = tl.lr[name], tl.decay[name]
    change = lambda s, g: tokens * (decay - 1) * s - lr * g if decay != 1 else -lr * g
    step = map_state(change, theta, grad)
    key = f"{name}.pending"
    levelstate[key] = step if key not in levelstate else \
        map_state(torch.add, levelstate[key], step)


def detach_all(levels: list[TaskLevel], state) -> None:
    """Every task level's states (and pending sums) without their graph."""
    for tl in levels:
        levelstate = own(state, tl.block)[tl.level.name]
        for name, value in levelstate.items():
            levelstate[name] = map_state(torch.Tensor.detach, value)


def copy_state(state):
    """A copy of the state's dicts (the tensors shared), so the caller's state is not changed."""
    if isinstance(state, list):
        return [copy_state(s) for s in state]
    return {k: dict(v) if isinstance(v, dict) else v for k, v in state.items()}


def tensors(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def map_state(f, *values):
    """f on a state's tensor, or layer by layer on an MLP memory's tuple of weights."""
    if isinstance(values[0], tuple):
        return tuple(f(*parts) for parts in zip(*values))
    return f(*values)
