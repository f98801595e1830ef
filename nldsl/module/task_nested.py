"""Nested CMS in the task driver (NL eq. 72, lower/task.py's `nest_inits`).

A block b whose initial state is learned by a slower task level a (`init learned by a`)
restarts at the start of each period of a (t = 0, C_a, 2 C_a, ...) from a's state
`theta.init` (Phi), and a writes Phi by its gd rule from

    G_Phi = sum_{t in a's period} dL_t / dPhi,

the *total* derivative, by the chain rule through b's writes since the restart (and through
anything else since that depends on Phi: a block b teaches in turn, its own initial state).
That is the meta-gradient of eq. 72's argmin_Phi E_{T ~ C_a} l(Theta, T; Phi) over a's period
(MAML-style); the block's own eq. 71 gradient stays the partial one. To take it, Phi is bound
once per period of a (`restart`), not per segment, and b's writes keep their graph under
`torch.no_grad()` too (second order inside the stream): the states hold the graph of the
slowest teacher's current period, dropped at its writes, so memory is bounded by that period
(and a call that ends inside it returns states that carry it, so a cut stream is one stream).
`through_writes=False` makes that gradient first order as well (each write a constant step, so
G_Phi = sum_t dL_t/dtheta_b); a student level without `backprop` writes constants, so Phi
learns from the tokens before b's first write after the restart only.
"""
from __future__ import annotations

import torch

from nldsl.module.task_state import TaskLevel, detach_all, map_state, node, own


@torch.enable_grad()                # a nested CMS keeps its graph under no_grad too
def restart(levels: list[TaskLevel], state, due: list[TaskLevel], graph: bool,
            outer: bool) -> None:
    """At the start of each period of a level in `due` (t = 0 and after each of its writes),
    every block it teaches restarts from its `theta.init` state, bound as a fresh node
    (`task_state.node`). Without an outer gradient, once every teacher restarts nothing is
    differentiated through the past any more: every state drops its graph (memory bounded by
    the slowest teacher's period)."""
    starting = [tl for tl in due if tl.inits]
    if not starting:
        return
    if not outer and len(starting) == sum(1 for tl in levels if tl.inits):
        detach_all(state)
    for tl in starting:
        levelstate = own(state, tl.block)[tl.level.name]
        for name in tl.inits:
            levelstate[name] = map_state(lambda v: node(v, graph), levelstate[name])
    teachers = {(id(own(state, tl.block)), tl.level.name) for tl in starting}
    for tl in levels:
        block = own(state, tl.block)
        for name, fast in tl.level.states.items():
            if fast.restart is not None and (id(block), fast.restart[0]) in teachers:
                block[tl.level.name][name] = block[fast.restart[0]][fast.restart[1]]
