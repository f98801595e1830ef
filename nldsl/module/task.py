"""The task driver: levels that learn from the outer task loss while the stream is read.

    y, state = nldsl.stream(model, inputs, targets, state, learn=True, end=True)

NL eq. 71 (lower/task.py): a level `every C tokens` with `minimize task by gd(lr, decay)`
writes at t = C, 2C, ... the sum of its C tokens' task-gradient steps, every one taken at its
last written state theta_i. Between writes the level is frozen, so the network is an ordinary
network on the tokens of a *segment* (the tokens up to the next write of any task level in the
network) and those tokens are parallel. Per segment [a, b) the driver

  1. runs the network on x_{a..b-1} with every task level at its current state (inside the
     module a task level has no writes: chunked.py's FrozenForm, or the reference);
  2. takes the loss of the segment, L = sum_{t in [a, b)} L_t (a sum, never a mean: eq. 71 sums
     per-token gradients, and the segmenting must not change a value), and
     G = torch.autograd.grad(L, theta) for every task state theta at once; each sequence of
     the batch has its own theta, so G[b] is sequence b's gradient;
  3. adds the segment's change to the level's pending sum, (b - a)(decay - 1) theta - lr G:
     the per-token change of the gd rule, summed (lr and decay from the spec's rule, through
     lower/task.py; hyper-parameter expressions, so one number per level);
  4. writes every level whose period ends at b: theta <- theta + pending.

Without outer gradients, a task state read only through its level's frozen products is no
autograd leaf: its gradient comes from the products' records, one fused GEMM per layer at the
write (module/task_recorded.py).

At the end of a sequence (`end=True`) a pending sum is written or dropped as the level's
`partial flush|drop` says. The pending sums live in the state (`state[level][name + ".pending"]`,
like any `every N` level's), so a stream cut into calls anywhere computes what one call does.
A segment a call's end cuts goes on in the next call: G of its later tokens runs through
everything since the segment began, and a written level, a conv or an attention that read a
task level before the cut (the second block of `nldsl.lm("hope", depth=2)` reading the first
block's CMS) holds part of that path. So the cut segment keeps its graph and its bound nodes in
the returned state (`task_state.carries_graph`: only where such a path exists) and the next
call binds no new ones until the segment ends. Without outer gradients no other graph outlives
its segment (`task_state.detach_all`): memory is bounded by a segment, however long the stream.
A level of period 1 makes every segment one token long: one forward and one backward of the
network per token (docs/modules.md measures it).

Outer gradients. With gradients enabled (outer training), a `backprop` task level's gradient is
taken with create_graph: the outer gradient flows through every inner write to the initial
states and the other parameters (second order; the graph of the whole call is kept, so memory
grows with T). `through_writes=False` truncates that gradient: the inner gradients are taken
without a graph and each write adds a constant step, so the outer gradient passes a write as the
identity (first order; kmccleary3301/nested_learning's "differentiable reads, stop-grad
writes"). A level without `backprop` writes constants (its written state is detached), as in
the module schedules. Without gradients (inference), every write is a constant, except in a
nested CMS (below).

Nested CMS (NL eq. 72): a block whose initial state a slower task level learns restarts from it
at each of that level's periods, which learns it from the total derivative through the block's
writes (module/task_nested.py).

`learn=False` freezes every task level: the call is `model(inputs, state, end=end)`, an ordinary
network, and no pending sum changes.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from nldsl.language.consteval import evaluate
from nldsl.module import taskgrad
from nldsl.module.module import CompiledModule
from nldsl.module.reference import STREAM
from nldsl.module.task_nested import restart
from nldsl.module.task_recorded import recordable, settle, sinks as recorded_sinks
from nldsl.module.task_state import (TaskLevel, accumulate, bind, carries_graph, copy_state,
                                     detach_all, gradients, map_state, own)
from nldsl.runtime.attention import differentiated_twice


def task_levels(model) -> list[TaskLevel]:
    """Every task level of the network: a compiled module's, or each block's of nldsl.lm."""
    found = []
    for key, block in _blocks(model):
        values = block.program.hparams
        restarts = [s.restart for lv in block.program.levels for s in lv.states.values()
                    if s.restart is not None]
        for level in block.program.levels:
            if level.task:
                found.append(TaskLevel(key, level,
                                       {w.target: float(evaluate(w.lr, values)) for w in level.task},
                                       {w.target: float(evaluate(w.decay, values)) for w in level.task},
                                       frozenset(i for t, i in restarts if t == level.name)))
    return found


def stream(model, inputs: torch.Tensor, targets: torch.Tensor, state=None, *, loss=None,
           learn: bool = True, end: bool = True, through_writes: bool = True):
    """Run `model` (a compiled module or an nldsl.lm network) on `inputs` [B, T, ...] while its
    task levels learn from `loss(outputs, targets)` (targets [B, T, ...]: token t's target at
    t). `loss(y, target) -> scalar` must sum its tokens' losses; nldsl.lm's default is the
    summed next-token cross-entropy (targets: the next tokens). `through_writes=False` (with
    gradients on) truncates the outer gradient at the writes: first order, each write a
    constant step. Returns (outputs, state)."""
    levels = task_levels(model)
    if not learn or not levels:
        return model(inputs, state, end=end)
    if torch.is_inference_mode_enabled():
        raise RuntimeError("nldsl.stream learns by autograd, which torch.inference_mode() "
                           "switches off: run it under torch.no_grad(), or pass learn=False")
    if inputs.shape[:2] != targets.shape[:2]:
        raise ValueError(f"inputs {list(inputs.shape)} and targets {list(targets.shape)} must "
                         "agree in batch and length: targets[:, t] is token t's target")
    loss = loss if loss is not None else default_loss(model)
    if state is None:
        _, state = model(inputs[:, :0], None, end=False)
    state = copy_state(state)
    start, steps = own(state, levels[0].block)[STREAM]["t"], inputs.shape[1]
    outer = torch.is_grad_enabled()
    nested = any(tl.inits for tl in levels)
    graph = outer or nested            # the states keep their graph from segment to segment
    create = graph and through_writes and any(tl.level.backprop for tl in levels)
    plan = {} if graph else recordable(dict(_blocks(model)), levels)
    recorded = plan
    writes = lambda t: [tl for tl in levels if t % tl.level.period == 0]
    carried = start > 0 and not writes(start)         # the last call ended inside a segment
    restart(levels, state, writes(start), graph, outer)
    outputs, a, folded = [], 0, {}
    for b in segment_ends(levels, start, steps):
        # a segment cut by a call's end goes on in the next call: its nodes and graph carry over
        carry = b == steps and not end and not writes(start + b)
        whole = (carried and a == 0) or carry   # bound states only: no record outlives a call
        if recorded and whole:
            for tl in levels:
                settle(state, tl, recorded, folded)
        recorded = {} if whole else plan
        with torch.enable_grad():
            thetas = bind(levels, state, graph, recorded, carried and a == 0)
            sinks = recorded_sinks(levels, state, recorded)
            with taskgrad.recording({id(value): sink for _, _, value, sink in sinks}), \
                    differentiated_twice() if create else nullcontext():
                y, after = model(inputs[:, a:b], state, end=end and b == steps)
            if not all(sink.applied for *_, sink in sinks):
                # the module did not read a recorded state through its frozen form (it fell
                # back to the token loop): the segment again, every state a bound leaf
                for tl in levels:
                    settle(state, tl, recorded, folded)
                recorded = plan = {}
                thetas = bind(levels, state, graph, recorded, carried and a == 0)
                with differentiated_twice() if create else nullcontext():
                    sinks, (y, after) = [], model(inputs[:, a:b], state, end=end and b == steps)
            state = after
            total = loss(y, targets[:, a:b])
            grads = gradients(total, thetas, create, graph or carry,
                              [sink.anchor for *_, sink in sinks])
        for tl, name, _, sink in sinks:
            tokens, records = folded.get((id(tl), name), (0, []))
            folded[(id(tl), name)] = (tokens + b - a, records + sink.records)
        for (tl, name, theta), grad in zip(thetas, grads):
            levelstate = own(state, tl.block)[tl.level.name]
            levelstate[name] = theta       # the state the network read (the same values)
            if not (create and tl.level.backprop):
                grad = map_state(torch.Tensor.detach, grad)
            accumulate(levelstate, name, theta, grad, b - a, tl)
        due = writes(start + b)
        for tl in due:
            settle(state, tl, recorded, folded, write=True)
            _write(own(state, tl.block)[tl.level.name], tl, graph, through_writes)
        restart(levels, state, due, graph, outer)
        if not (graph or carry and carries_graph(levels, state)):
            detach_all(state)       # without a graph to keep, no segment's graph outlives it
        outputs.append(y if outer else y.detach())
        a = b
    for tl in levels:
        settle(state, tl, recorded, folded)
    if not outputs:
        # an empty call: the module never writes a task level, so their entries pass as they
        # are (the module's copies would not be the nodes a nested block's graph starts from);
        # under autograd like every segment: the module's state conversions (an MLP memory's
        # layers flattened and back) keep a carried segment's graph, which no_grad would drop
        with torch.enable_grad():
            y, after = model(inputs, state, end=end)
        for tl in levels:
            own(after, tl.block)[tl.level.name] = own(state, tl.block)[tl.level.name]
        state = after
        outputs.append(y if outer else y.detach())
    if end:
        flushed = [tl for tl in levels if tl.level.partial == "flush" and any(
            f"{name}.pending" in own(state, tl.block)[tl.level.name] for name in tl.level.states)]
        for tl in flushed:
            _write(own(state, tl.block)[tl.level.name], tl, graph, through_writes)
        restart(levels, state, flushed, graph, outer)
        for tl in levels:
            for name in tl.level.states:
                own(state, tl.block)[tl.level.name].pop(f"{name}.pending", None)
        if nested and not outer:
            detach_all(state)
    return torch.cat(outputs, dim=1), state


def _blocks(model) -> list[tuple[object, CompiledModule]]:
    from nldsl.train.model import LanguageModel

    if isinstance(model, CompiledModule):
        return [(None, model)]
    if isinstance(model, LanguageModel):
        return list(enumerate(model.blocks))
    raise TypeError(f"nldsl.stream runs a compiled module or an nldsl.lm network, got "
                    f"{type(model).__name__}")


def default_loss(model):
    from nldsl.train.model import LanguageModel

    if not isinstance(model, LanguageModel):
        raise TypeError("a compiled module has no task loss of its own: pass loss=fn, "
                        "fn(y [B, n, dim], target [B, n, ...]) -> the sum of the tokens' losses")
    return lambda logits, tokens: F.cross_entropy(logits.flatten(0, 1), tokens.flatten(),
                                                  reduction="sum")


def segment_ends(levels: list[TaskLevel], start: int, steps: int) -> list[int]:
    """The ends of the call's segments: every token count at which a task level writes (t a
    multiple of its period), and the call's end."""
    cuts = {steps} if steps else set()
    for period in {tl.level.period for tl in levels}:
        first = (start // period + 1) * period - start            # tokens to the next write
        cuts.update(range(first, steps, period))
    return sorted(cuts)


@torch.enable_grad()                # a nested CMS keeps its graph under no_grad too
def _write(levelstate: dict, tl: TaskLevel, graph: bool, through: bool) -> None:
    """theta <- theta + pending. The gradient goes through it (a `backprop` level with a graph:
    gradients on, or a nested block's initial state to learn), passes it as the identity
    (`through_writes=False`: the step a constant), or stops (a level without `backprop`, or no
    graph: the new state a constant)."""
    for name in tl.level.states:
        pending = levelstate.pop(f"{name}.pending", None)
        if pending is None:
            continue
        if not (graph and tl.level.backprop):
            levelstate[name] = map_state(lambda s, p: (s + p).detach(), levelstate[name], pending)
        else:
            step = pending if through else map_state(torch.Tensor.detach, pending)
            levelstate[name] = map_state(torch.add, levelstate[name], step)
