"""The `reference` schedule: a token-by-token interpreter of docs/language.md's semantics.

Slow and obviously right; the ground truth every fast path is tested against. At each token t
(1-based over the stream, carried in the state so that a stream cut anywhere gives the same
values):

  0. a `chunk C` level whose chunk starts at t keeps its states as the chunk-start snapshot;
  1. every context is computed from the states before this token's writes (a level's own
     states at the chunk-start snapshot);
  2. the levels write, fastest first: a gradient write is S <- decay S - lr G with G the
     gradient at the snapshot; `every N` levels add the per-token change to a pending sum and
     apply it at t = N, 2N, ...; a level without `backprop` writes constants (detached); a
     rule with `clip = c` clips G per weight matrix first (module/guard.py);
  3. reads (a plain read sees the new state, `before write` the state the write started
     from), then `out`.
"""
from __future__ import annotations

import torch

from nldsl.lower.program import Program, TokenLevel
from nldsl.module.guard import clip_gradient
from nldsl.module.unit import UnitValues

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
    for level in program.levels:
        for name in level.contexts:
            unit.context(level, name)
    for name in program.outer_contexts:
        unit.outer_context(name)
    unit.before = {level.name: _before_write(level, state) for level in program.levels}
    for level in program.levels:
        _write(level, unit, state, t)
    return unit.output()


def _before_write(level: TokenLevel, state: dict) -> dict:
    """The states a `before write` read sees: the chunk-start snapshot under chunk C."""
    own = state[level.name]
    return {name: own.get(f"{name}.chunk_start", own[name]) if level.chunk > 1 else own[name]
            for name in level.states}


def _write(level: TokenLevel, unit: UnitValues, state: dict, t: int) -> None:
    own = state[level.name]
    frame = unit.frames[level.name]
    new = {}
    for write in level.writes:
        current = own[write.target]
        if write.kind == "explicit":
            value = unit.evaluate(level, "current", write.value)
        else:
            grad = unit.gradient(level, write)
            if write.clip is not None:
                grad = clip_gradient(frame, level.states[write.target].mlp, grad,
                                     unit.evaluate(level, "current", write.clip))
            lr = unit.evaluate(level, "current", write.lr)
            decay = unit.evaluate(level, "current", write.decay)
            if write.kind == "momentum":
                name = f"{write.target}_momentum"
                beta = unit.evaluate(level, "current", write.beta)
                momentum = _sub(frame, _mul(frame, beta, own[name]), _mul(frame, lr, grad))
                new[name] = momentum
                value = _add(frame, _mul(frame, decay, current), momentum)
            else:
                value = _sub(frame, _mul(frame, decay, current), _mul(frame, lr, grad))
        new[write.target] = value
    if not level.backprop:
        new = {name: value.detach() for name, value in new.items()}
    if level.period == 1:
        own.update(new)
        return
    for name, value in new.items():
        own[f"{name}.pending"] = own.get(f"{name}.pending", 0) + (value - own[name])
    if t % level.period == 0:
        _apply_pending(level, own)


def _apply_pending(level: TokenLevel, own: dict) -> None:
    for key in [k for k in own if k.endswith(".pending")]:
        name = key[: -len(".pending")]
        own[name] = own[name] + own.pop(key)


def finish(program: Program, state: dict) -> None:
    """The end of a sequence: pending sums of `every N` levels are written (`partial flush`)
    or discarded (`partial drop`)."""
    for level in program.levels:
        own = state[level.name]
        if level.partial == "flush":
            _apply_pending(level, own)
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
