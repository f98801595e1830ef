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

Without outer gradients, a task state read only through its level's frozen products
(module/taskgrad.py: `recordable`) is no autograd leaf: the backward keeps each product's
(u, dL/d(u W^T)), and at the level's write steps 3-4 are one fused GEMM per layer over all
the period's tokens (`taskgrad.write`); a call that ends inside the period folds them into the
pending sum (`_settle`). The same sums in another order.

At the end of a sequence (`end=True`) a pending sum is written or dropped as the level's
`partial flush|drop` says. The pending sums live in the state (`state[level][name + ".pending"]`,
like any `every N` level's), so a stream cut into calls anywhere computes what one call does.
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

Nested CMS (NL eq. 72, lower/task.py's `nest_inits`). A block b whose initial state is learned
by a slower task level a (`init learned by a`) restarts at the start of each period of a
(t = 0, C_a, 2 C_a, ...) from a's state `theta.init` (Phi), and a writes Phi by its gd rule from

    G_Phi = sum_{t in a's period} dL_t / dPhi,

the *total* derivative, by the chain rule through b's writes since the restart (and through
anything else since that depends on Phi: a block b teaches in turn, its own initial state).
That is the meta-gradient of eq. 72's argmin_Phi E_{T ~ C_a} l(Theta, T; Phi) over a's period
(MAML-style); the block's own eq. 71 gradient stays the partial one. To take it, Phi is bound
once per period of a (`_restart`), not per segment, and b's writes keep their graph under
`torch.no_grad()` too (second order inside the stream): the states hold the graph of the
slowest teacher's current period, dropped at its writes, so memory is bounded by that period
(and a call that ends inside it returns states that carry it, so a cut stream is one stream).
`through_writes=False` makes that gradient first order as well (each write a constant step, so
G_Phi = sum_t dL_t/dtheta_b); a student level without `backprop` writes constants, so Phi
learns from the tokens before b's first write after the restart only.

`learn=False` freezes every task level: the call is `model(inputs, state, end=end)`, an ordinary
network, and no pending sum changes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nldsl.consteval import evaluate
from nldsl.lower.program import TokenLevel
from nldsl.module import taskgrad
from nldsl.module.module import CompiledModule
from nldsl.module.reference import STREAM
from nldsl.runtime import mlp


@dataclass(frozen=True)
class TaskLevel:
    """A level of one block that learns from the task loss, with its rule's numbers."""

    block: object                  # the key of the block's state in the network's state
    level: TokenLevel
    lr: dict[str, float]           # state -> lr
    decay: dict[str, float]        # state -> decay
    inits: frozenset = frozenset() # its states that are a nested block's initial state (eq. 72)


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
    loss = loss if loss is not None else _default_loss(model)
    if state is None:
        _, state = model(inputs[:, :0], None, end=False)
    state = _copy(state)
    start, steps = _own(state, levels[0].block)[STREAM]["t"], inputs.shape[1]
    outer = torch.is_grad_enabled()
    nested = any(tl.inits for tl in levels)
    graph = outer or nested            # the states keep their graph from segment to segment
    create = graph and through_writes and any(tl.level.backprop for tl in levels)
    recorded = {} if graph else _recordable(model, levels)
    _restart(levels, state, [tl for tl in levels if start % tl.level.period == 0], graph, outer)
    outputs, a, folded = [], 0, {}
    for b in _cuts(levels, start, steps):
        with torch.enable_grad():
            thetas = _bind(levels, state, graph, recorded)
            sinks = _sinks(levels, state, recorded)
            with taskgrad.recording({id(value): sink for _, _, value, sink in sinks}):
                y, after = model(inputs[:, a:b], state, end=end and b == steps)
            if not all(sink.applied for *_, sink in sinks):
                # the module did not read a recorded state through its frozen form (it fell
                # back to the token loop): the segment again, every state a bound leaf
                for tl in levels:
                    _settle(state, tl, recorded, folded)
                recorded = {}
                thetas = _bind(levels, state, graph, recorded)
                sinks, (y, after) = [], model(inputs[:, a:b], state, end=end and b == steps)
            state = after
            total = loss(y, targets[:, a:b])
            grads = _grads(total, thetas, create, graph, [sink.anchor for *_, sink in sinks])
        for tl, name, _, sink in sinks:
            tokens, records = folded.get((id(tl), name), (0, []))
            folded[(id(tl), name)] = (tokens + b - a, records + sink.records)
        for (tl, name, theta), grad in zip(thetas, grads):
            own = _own(state, tl.block)[tl.level.name]
            # the state the network read (the same values); without a graph, no leaf escapes
            own[name] = theta if graph else _map(torch.Tensor.detach, theta)
            if not (create and tl.level.backprop):
                grad = _map(torch.Tensor.detach, grad)
            _accumulate(own, name, theta, grad, b - a, tl)
        due = [tl for tl in levels if (start + b) % tl.level.period == 0]
        for tl in due:
            _settle(state, tl, recorded, folded, write=True)
            _write(_own(state, tl.block)[tl.level.name], tl, graph, through_writes)
        _restart(levels, state, due, graph, outer)
        outputs.append(y if outer else y.detach())
        a = b
    for tl in levels:
        _settle(state, tl, recorded, folded)
    if not outputs:
        y, state = model(inputs, state, end=end)
        outputs.append(y)
    if end:
        flushed = [tl for tl in levels if tl.level.partial == "flush" and any(
            f"{name}.pending" in _own(state, tl.block)[tl.level.name] for name in tl.level.states)]
        for tl in flushed:
            _write(_own(state, tl.block)[tl.level.name], tl, graph, through_writes)
        _restart(levels, state, flushed, graph, outer)
        for tl in levels:
            for name in tl.level.states:
                _own(state, tl.block)[tl.level.name].pop(f"{name}.pending", None)
        if nested and not outer:
            _detach(levels, state)
    return torch.cat(outputs, dim=1), state


def _blocks(model) -> list[tuple[object, CompiledModule]]:
    from nldsl.train.model import LanguageModel

    if isinstance(model, CompiledModule):
        return [(None, model)]
    if isinstance(model, LanguageModel):
        return list(enumerate(model.blocks))
    raise TypeError(f"nldsl.stream runs a compiled module or an nldsl.lm network, got "
                    f"{type(model).__name__}")


def _default_loss(model):
    from nldsl.train.model import LanguageModel

    if not isinstance(model, LanguageModel):
        raise TypeError("a compiled module has no task loss of its own: pass loss=fn, "
                        "fn(y [B, n, dim], target [B, n, ...]) -> the sum of the tokens' losses")
    return lambda logits, tokens: F.cross_entropy(logits.flatten(0, 1), tokens.flatten(),
                                                  reduction="sum")


def _cuts(levels: list[TaskLevel], start: int, steps: int) -> list[int]:
    """The ends of the call's segments: every token count at which a task level writes (t a
    multiple of its period), and the call's end."""
    cuts = {steps} if steps else set()
    for period in {tl.level.period for tl in levels}:
        first = (start // period + 1) * period - start            # tokens to the next write
        cuts.update(range(first, steps, period))
    return sorted(cuts)


def _bind(levels, state, graph: bool, recorded: dict) -> list[tuple[TaskLevel, str, object]]:
    """Every task state as a fresh node the loss is differentiated by (`_node`). The fresh
    node makes G the partial derivative at this segment's states: with gradients through the
    writes, a state written earlier (B_1 = B_0 - lr G_B(A)) depends on another level's state,
    and the derivative by A itself would add the path through B_1. A nested block's initial
    state keeps the node its block restarted from (`_restart`): its G is the total derivative,
    through the block's writes since then (eq. 72). A recorded state is no node: its gradient
    comes from its products' records (`_sinks`)."""
    bound = []
    for tl in levels:
        own = _own(state, tl.block)[tl.level.name]
        for name in (n for n in tl.level.states if n not in recorded.get(id(tl), {})):
            if name not in tl.inits or not _tensors(own[name])[0].requires_grad:
                own[name] = _map(lambda v: _node(v, graph), own[name])
            bound.append((tl, name, own[name]))
    return bound


def _node(value: torch.Tensor, graph: bool) -> torch.Tensor:
    """A view of the state when gradients flow into it from before, else a detached leaf."""
    return value.view_as(value) if graph and value.requires_grad else \
        value.detach().requires_grad_(True)


@torch.enable_grad()                # a nested CMS keeps its graph under no_grad too
def _restart(levels, state, due: list[TaskLevel], graph: bool, outer: bool) -> None:
    """NL eq. 72: at the start of each period of a level in `due` (t = 0 and after each of its
    writes), every block it teaches restarts from its `theta.init` state, bound as a fresh node
    (`_node`). Without an outer gradient, once every teacher restarts nothing is differentiated
    through the past any more: every state drops its graph (memory bounded by the slowest
    teacher's period)."""
    starting = [tl for tl in due if tl.inits]
    if not starting:
        return
    if not outer and len(starting) == sum(1 for tl in levels if tl.inits):
        _detach(levels, state)
    for tl in starting:
        own = _own(state, tl.block)[tl.level.name]
        for name in tl.inits:
            own[name] = _map(lambda v: _node(v, graph), own[name])
    teachers = {(id(_own(state, tl.block)), tl.level.name) for tl in starting}
    for tl in levels:
        block = _own(state, tl.block)
        for name, fast in tl.level.states.items():
            if fast.restart is not None and (id(block), fast.restart[0]) in teachers:
                block[tl.level.name][name] = block[fast.restart[0]][fast.restart[1]]


def _detach(levels, state) -> None:
    for tl in levels:
        own = _own(state, tl.block)[tl.level.name]
        for name, value in own.items():
            own[name] = _map(torch.Tensor.detach, value)


def _sinks(levels, state, recorded: dict) -> list[tuple[TaskLevel, str, torch.Tensor, object]]:
    """A sink per recorded state, keyed by the tensor the module will see: an MLP's weights
    become the layer views of one flat tensor, which the module's state conversion hands on
    as it is (mlp.flatten), so the frozen form's products find it."""
    found = []
    for tl in levels:
        own = _own(state, tl.block)[tl.level.name]
        for name, layout in recorded.get(id(tl), {}).items():
            value = (mlp.flatten(layout, own[name]) if layout else own[name]).detach()
            own[name] = mlp.layers(layout, value) if layout else value
            found.append((tl, name, value, taskgrad.Sink()))
    return found


def _recordable(model, levels: list[TaskLevel]) -> dict[int, dict]:
    """id of a task level -> {state: its MLP layout or None} for the states whose gradient the
    frozen form's products give whole (module/taskgrad.py)."""
    blocks = dict(_blocks(model))
    found = {}
    for tl in levels:
        block = blocks[tl.block]
        names = taskgrad.recordable(block.program, tl.level, block.fast_paths)
        found[id(tl)] = {name: tl.level.states[name].mlp for name in names}
    return found


def _settle(state, tl: TaskLevel, recorded: dict, folded: dict, write: bool = False) -> None:
    """A recorded state's gradient since its last write, summed from its records (one GEMM per
    layer for all the tokens): at a write with no pending sum from an earlier call, the written
    state itself (taskgrad.write); else into its pending sum, as `_accumulate` adds a bound
    state's."""
    own = _own(state, tl.block)[tl.level.name]
    for name, layout in recorded.get(id(tl), {}).items():
        tokens, records = folded.pop((id(tl), name), (0, []))
        if not tokens:
            continue
        theta = own[name]
        if write and f"{name}.pending" not in own:
            beta = 1 + tokens * (tl.decay[name] - 1)
            own[name] = taskgrad.write(layout, theta, records, tl.lr[name], beta)
            continue
        grads = taskgrad.fold(records, len(layout.layers) if layout else 1)
        grad = _map(torch.zeros_like, theta) if grads is None else \
            (tuple(grads) if layout else grads[0])
        _accumulate(own, name, theta, grad, tokens, tl)


def _grads(total: torch.Tensor, thetas, create: bool, graph: bool, anchors=()) -> list:
    """d total / d theta for every bound state (zero for a state the loss does not use); the
    anchors run the recorded products' backward (their own gradients are not used)."""
    flat = [t for _, _, theta in thetas for t in _tensors(theta)]
    grads = torch.autograd.grad(total, flat + list(anchors), allow_unused=True,
                                create_graph=create, retain_graph=graph or create)[:len(flat)]
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(flat, grads)]
    found, i = [], 0
    for _, _, theta in thetas:
        n = len(_tensors(theta))
        found.append(tuple(grads[i:i + n]) if isinstance(theta, tuple) else grads[i])
        i += n
    return found


@torch.enable_grad()                # a nested CMS keeps its graph under no_grad too
def _accumulate(own: dict, name: str, theta, grad, tokens: int, tl: TaskLevel) -> None:
    """pending += tokens (decay - 1) theta - lr G: the segment's sum of per-token gd changes."""
    lr, decay = tl.lr[name], tl.decay[name]
    change = lambda s, g: tokens * (decay - 1) * s - lr * g if decay != 1 else -lr * g
    step = _map(change, theta, grad)
    key = f"{name}.pending"
    own[key] = step if key not in own else _map(torch.add, own[key], step)


@torch.enable_grad()                # a nested CMS keeps its graph under no_grad too
def _write(own: dict, tl: TaskLevel, graph: bool, through: bool) -> None:
    """theta <- theta + pending. The gradient goes through it (a `backprop` level with a graph:
    gradients on, or a nested block's initial state to learn), passes it as the identity
    (`through_writes=False`: the step a constant), or stops (a level without `backprop`, or no
    graph: the new state a constant)."""
    for name in tl.level.states:
        pending = own.pop(f"{name}.pending", None)
        if pending is None:
            continue
        if not (graph and tl.level.backprop):
            own[name] = _map(lambda s, p: (s + p).detach(), own[name], pending)
        else:
            step = pending if through else _map(torch.Tensor.detach, pending)
            own[name] = _map(torch.add, own[name], step)


def _own(state, key) -> dict:
    return state if key is None else state[key]


def _copy(state):
    """A copy of the state's dicts (the tensors shared), so the caller's state is not changed."""
    if isinstance(state, list):
        return [_copy(s) for s in state]
    return {k: dict(v) if isinstance(v, dict) else v for k, v in state.items()}


def _tensors(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def _map(f, *values):
    """f on a state's tensor, or layer by layer on an MLP memory's tuple of weights."""
    if isinstance(values[0], tuple):
        return tuple(f(*parts) for parts in zip(*values))
    return f(*values)
