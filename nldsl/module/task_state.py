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


def detach_all(state) -> None:
    """Every tensor of the network's state (each block's levels, pending sums, conv and
    attention caches) without its graph, in place: nothing will differentiate through the
    past any more, and the graph of every segment since would otherwise stay referenced by
    the states (memory growing with the stream)."""
    for _, _, entries in _entries(state):
        for name, value in entries.items():
            if isinstance(value, (torch.Tensor, tuple)):
                entries[name] = map_state(_detached, value)


def carries_graph(levels: list[TaskLevel], state) -> bool:
    """Does a state outside the task levels (a written level's, a conv's or an attention's
    cache) depend on a bound task state? Only then can a later call's loss reach one."""
    tasks = {(id(own(state, tl.block)), tl.level.name) for tl in levels}
    return any(t.requires_grad for block, key, entries in _entries(state)
               if (id(block), key) not in tasks
               for value in entries.values() if isinstance(value, (torch.Tensor, tuple))
               for t in tensors(value))


def _entries(state):
    """(block, key, entries) for each dict of the network's state: a level's, or the stream's."""
    for block in state if isinstance(state, list) else [state]:
        for key, entries in block.items():
            yield block, key, entries


def _detached(value: torch.Tensor) -> torch.Tensor:
    return value.detach() if value.requires_grad else value


def bind(levels, state, graph: bool, recorded: dict,
         carried: bool) -> list[tuple[TaskLevel, str, object]]:
    """Every task state as a fresh node the loss is differentiated by (`task_state.node`). The fresh
    node makes G the partial derivative at this segment's states: with gradients through the
    writes, a state written earlier (B_1 = B_0 - lr G_B(A)) depends on another level's state,
    and the derivative by A itself would add the path through B_1. A nested block's initial
    state keeps the node its block restarted from (`task_nested.restart`): its G is the total derivative,
    through the block's writes since then (eq. 72). So does every state of a segment the last
    call's end cut (`carried`): the next part's G goes on through the graph since the segment
    began, so a stream cut into calls is one stream. A recorded state is no node: its
    gradient comes from its products' records (`task_recorded.sinks`)."""
    bound = []
    for tl in levels:
        levelstate = own(state, tl.block)[tl.level.name]
        for name in (n for n in tl.level.states if n not in recorded.get(id(tl), {})):
            kept = (carried or name in tl.inits) and tensors(levelstate[name])[0].requires_grad
            if not kept:
                levelstate[name] = map_state(lambda v: node(v, graph), levelstate[name])
            bound.append((tl, name, levelstate[name]))
    return bound


def gradients(total: torch.Tensor, thetas, create: bool, retain: bool, anchors=()) -> list:
    """d total / d theta for every bound state (zero for a state the loss does not use); the
    anchors run the recorded products' backward (their own gradients are not used). `retain`
    keeps the graph for a later backward (the outer one, a nested block's, or the next call's
    part of a segment)."""
    flat = [t for _, _, theta in thetas for t in tensors(theta)]
    grads = torch.autograd.grad(total, flat + list(anchors), allow_unused=True,
                                create_graph=create, retain_graph=retain or create)[:len(flat)]
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(flat, grads)]
    found, i = [], 0
    for _, _, theta in thetas:
        n = len(tensors(theta))
        found.append(tuple(grads[i:i + n]) if isinstance(theta, tuple) else grads[i])
        i += n
    return found


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
