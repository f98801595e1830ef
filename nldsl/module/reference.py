"""The `reference` schedule: a token-by-token interpreter of docs/language.md's semantics.

Slow and obviously right; the ground truth every fast path is tested against. At each token t
(1-based over the stream, carried in the state so that a stream cut anywhere gives the same
values):

  0. a `chunk C` level whose chunk starts at t keeps its states as the chunk-start snapshot;
  1. every context is computed from the states before this token's writes (a level's own
     states at the chunk-start snapshot);
  2. the levels write, fastest first: a gradient write is S <- decay S - lr G with G the
     gradient at the snapshot (transformed first by a rule chain's rules, runtime/chain.py;
     `dgd(precondition = true)`: - lr (S k) k^T besides, on the previous token's S, k at the
     snapshot: NL eqs. 88, 90; a
     `window` loss sums over the level's ring buffer of past contexts, unit.py); `every N`
     levels add the per-token change to a pending sum and apply it at t = N, 2N, ...; a `once`
     level adds the token's gradient to a pending sum and takes one rule step with it at
     t = N, 2N, ..., with the rule's arguments of that token; a level without `backprop` writes
     constants (detached);
     a rule with `clip = c` clips G per weight matrix first (module/guard.py);
     a level that learns from the task loss is frozen here (the task driver writes it);
  3. reads (a plain read sees the new state, `before write` the state the write started
     from), then `out`.
"""
from __future__ import annotations

import torch

from nldsl.lower.program import Program, TokenLevel
from nldsl.module.guard import clip_gradient
from nldsl.module.unit import UnitValues
from nldsl.runtime import layerwise, mlp
from nldsl.runtime.chain import transform
from nldsl.runtime.frame import Frame

STREAM = "_stream"


def run_reference(program: Program, params: dict, x: torch.Tensor, state: dict,
                  end: bool = True) -> tuple[torch.Tensor, dict]:
    """x [B, T, dim], the state at the stream's position -> (out [B, T, dim], the new state)."""
    state = {key: dict(value) for key, value in state.items()}
    outputs = []
    for i in range(x.shape[1]):
        t = state[STREAM]["t"] + 1
        outputs.append(_token(program, params, state, x[:, i], t))   # [B, dim]
        state[STREAM]["t"] = t
    if end:
        finish(program, state)
    y = torch.stack(outputs, dim=1) if outputs else x.new_zeros(x.shape)  # [B, T, dim]
    return y, state


def _token(program: Program, params: dict, state: dict, x_t: torch.Tensor, t: int) -> torch.Tensor:
    for level in program.levels:
        if level.chunk > 1 and (t - 1) % level.chunk == 0:
            for name in level.states:
                state[level.name][f"{name}.chunk_start"] = state[level.name][name]
    unit = UnitValues(program, params, state, x_t, t)
    # known before any write: a context may use another level's `before write` read
    unit.before = {level.name: _before_write(level, state) for level in program.levels}
    for level in program.levels:
        for name in level.contexts:
            unit.context(level, name)
    for name in program.outer_contexts:
        unit.outer_context(name)
    for level in program.levels:
        _write(level, unit, state, t)
    return unit.output()


def _before_write(level: TokenLevel, state: dict) -> dict:
    """The states a `before write` read sees: the chunk-start snapshot under chunk C."""
    own = state[level.name]
    return {name: own.get(f"{name}.chunk_start", own[name]) if level.chunk > 1 else own[name]
            for name in level.states}


def _write(level: TokenLevel, unit: UnitValues, state: dict, t: int) -> None:
    if not (level.writes or level.once):
        return                   # frozen here: the task driver writes it (module/task.py), or
    #                              the program is frozen (lower/freeze.py), or it has no state
    if level.once:
        _write_once(level, unit, state[level.name], t)
        return
    own = state[level.name]
    frame = unit.frames[level.name]
    new = {}
    for write in level.writes:
        current = own[write.target]
        layout = level.states[write.target].mlp
        gate = lambda expr: _gate(level, write.target, frame,
                                  unit.evaluate(level, "current", expr))
        if write.kind == "explicit" and layout is not None:
            value = unit.evaluate_memory(level, "current", write.value, layout)
        elif write.kind == "explicit":
            value = unit.evaluate(level, "current", write.value)
        else:
            grad = unit.gradient(level, write)
            if write.clip is not None:
                grad = clip_gradient(frame, level.states[write.target].mlp, grad,
                                     unit.evaluate(level, "current", write.clip))
            grad = _transformed(level, unit, write, grad, own, new)
            lr, decay = gate(write.lr), gate(write.decay)
            if write.kind == "momentum":
                name = f"{write.target}_momentum"
                beta = gate(write.beta)
                momentum = _sub(frame, _mul(frame, beta, own[name]), _mul(frame, lr, grad))
                new[name] = momentum
                value = _add(frame, _mul(frame, decay, current), momentum)
            else:
                value = _sub(frame, _mul(frame, decay, current), _mul(frame, lr, grad))
            if write.precondition is not None:      # eq. 88: on S_{t-1}, not the snapshot
                key = unit.evaluate(level, "snapshot", write.precondition)
                if frame.rank(key) == 0:             # head_dim 1: a number per head, k [1]
                    key = key.unsqueeze(-1)
                term = mlp.precondition(level.states[write.target].mlp, current, key)
                value = _sub(frame, value, _mul(frame, lr, term))
        new[write.target] = value
    if level.window > 1:
        for name in level.windowed:
            own[f"{name}.window"] = unit.windowed(level, name)[:, 1 - level.window:]
    if not level.backprop:
        new = {name: value.detach() for name, value in new.items()}
    if level.period == 1:
        own.update(new)
        return
    for name, value in new.items():
        own[f"{name}.pending"] = own.get(f"{name}.pending", 0) + (value - own[name])
    if t % level.period == 0:
        _apply_pending(level, own)


def _transformed(level: TokenLevel, unit: UnitValues, write, grad, own: dict, new: dict):
    """G after the rule chain's transforms (runtime/chain.py); buffers go to `new`."""
    frame = unit.frames[level.name]
    layout = level.states[write.target].mlp
    for step in write.chain:
        args = {k: unit.evaluate(level, "current", v) for k, v in step.args.items()}
        grad, buffer = transform(step, grad, args, own.get(step.buffer), layout,
                                 lambda a, b: _mul(frame, a, b))
        if buffer is not None:
            new[step.buffer] = buffer
    return grad


def _gate(level: TokenLevel, target: str, frame, value):
    """A rule's lr, decay or beta as a factor of its state: a channel-wise gate scales an MLP's
    weights by columns or rows, a matrix's columns or rows (runtime/layerwise.py)."""
    state = level.states[target]
    if state.mlp is not None:
        return layerwise.channel_gate(state.mlp, value, frame)
    return layerwise.matrix_gate(value, state.shape, frame)


def _write_once(level: TokenLevel, unit: UnitValues, own: dict, t: int) -> None:
    """`once` (docs/language.md): G = the sum of the period's gradients (each at the snapshot),
    kept as `S.pending`; the rule's arguments of the latest token as `S.rule.pending`; one rule
    step at the period's end (or at a flush)."""
    for write in level.writes:
        grad = unit.gradient(level, write)
        if write.clip is not None:
            grad = clip_gradient(unit.frames[level.name], level.states[write.target].mlp, grad,
                                 unit.evaluate(level, "current", write.clip))
        key = f"{write.target}.pending"
        own[key] = grad if key not in own else own[key] + grad
        arguments = (write.lr, write.decay) + ((write.beta,) if write.kind == "momentum" else ())
        own[f"{write.target}.rule.pending"] = tuple(   # channel-wise gates as factors, as _write's
            _gate(level, write.target, unit.frames[level.name], unit.evaluate(level, "current", a))
            for a in arguments)
    if t % level.period == 0:
        _step_once(level, own)


def _step_once(level: TokenLevel, own: dict) -> None:
    """One rule step of a `once` level with the pending gradient sum G: S <- decay S - lr G,
    or m <- beta m - lr G; S <- decay S + m."""
    frame = Frame(1, level.heads)
    new = {}
    for write in level.writes:
        if f"{write.target}.pending" not in own:
            continue
        grad = own.pop(f"{write.target}.pending")
        lr, decay, *beta = own.pop(f"{write.target}.rule.pending")
        step = _mul(frame, lr, grad)
        if write.kind == "momentum":
            name = f"{write.target}_momentum"
            new[name] = _sub(frame, _mul(frame, beta[0], own[name]), step)
            new[write.target] = _add(frame, _mul(frame, decay, own[write.target]), new[name])
        else:
            new[write.target] = _sub(frame, _mul(frame, decay, own[write.target]), step)
    if not level.backprop:
        new = {name: value.detach() for name, value in new.items()}
    own.update(new)


def _apply_pending(level: TokenLevel, own: dict) -> None:
    for key in [k for k in own if k.endswith(".pending")]:
        name = key[: -len(".pending")]
        own[name] = own[name] + own.pop(key)


def finish(program: Program, state: dict) -> None:
    """The end of a sequence: pending sums of `every N` levels are written (`partial flush`)
    or discarded (`partial drop`)."""
    for level in program.levels:
        if level.task:
            continue             # its pending sum is the task driver's (module/task.py)
        own = state[level.name]
        if level.partial == "flush":
            (_step_once if level.once else _apply_pending)(level, own)
        for key in [k for k in own if k.endswith(".pending")]:
            del own[key]


def _mul(frame, a, b):
    a, b = frame.align(a, b)
    return a * b


def _add(frame, a, b):
    a, b = frame.align(a, b)
    return a + b


def _sub(frame, a, b):
    a, b = frame.align(a, b)
    return a - b
