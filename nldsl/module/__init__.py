"""Compile module specs to `torch.nn.Module`s (docs/modules.md).

    m = nldsl.compile("deltanet", dim=256)          # schedule="chunked" by default
    y, state = m(x)                                 # x: [B, T, dim]
"""
from __future__ import annotations

from nldsl.errors import NLDSLError


def compile(spec, schedule: str = "chunked", block_size: int = 64,  # noqa: A001
            checkpoint: bool = False, **hparams):
    """Spec (or stdlib name, path, text) + hyper-parameters -> CompiledModule.

    `schedule` says how, never what: "reference" (token by token) or "chunked" (the fast
    paths of docs/modules.md, block_size tokens at a time; a level without one runs token by
    token). `checkpoint` (chunked schedule, deep memories): keep only each chunk's start state
    for the backward pass and recompute the chunk there (a `once` level's periodic form: each
    region of block_size tokens, in whole periods; docs/modules.md, "Memory for the backward
    pass"). Changing any of them never changes a value beyond rounding."""
    from nldsl.lower.module import lower_module
    from nldsl.module.checks import resolve_hparams
    from nldsl.module.module import SCHEDULES, CompiledModule
    from nldsl.spec import Spec, load

    spec = spec if isinstance(spec, Spec) else load(spec)
    if spec.decl.kind != "module":
        raise NLDSLError(f"{spec.decl.name} is an optimizer; nldsl.optimizer(spec, params) "
                         "compiles it")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if not isinstance(checkpoint, bool):
        raise ValueError(f"checkpoint must be True or False, got {checkpoint!r}")
    values = resolve_hparams(spec, hparams)
    return CompiledModule(spec, lower_module(spec, values), schedule, block_size, checkpoint)


def stream(model, inputs, targets, state=None, *, loss=None, learn: bool = True,
           end: bool = True, through_writes: bool = True):
    """Run a compiled module or an nldsl.lm network on `inputs` while its levels that
    `minimize task` learn from the task loss on `targets` (NL eq. 71; docs/modules.md,
    "Levels that learn from the task loss"). `learn=False` freezes them: the call is then
    `model(inputs, state, end=end)`, whose in-context memories still write (`freeze(model)`
    freezes every level). With gradients on, the outer gradient goes through the
    inner writes (second order); `through_writes=False` truncates it there (first order).
    Returns (outputs, state); pass the state back to go on."""
    from nldsl.module.task import stream as run

    return run(model, inputs, targets, state, loss=loss, learn=learn, end=end,
               through_writes=through_writes)


def stream_windows(model, inputs, targets, state=None, *, window: int, loss=None,
                   scale: float = 1.0, through_writes: bool = True, end: bool = True):
    """Outer training with memory bounded by a window: `nldsl.stream` on `window` tokens at a
    time, each window's loss backpropagated (`(scale * loss).backward()`) before the next and
    the state detached between windows (truncated backpropagation through time;
    docs/modules.md, "Levels that learn from the task loss"). Returns (outputs, state, the
    summed loss), all detached."""
    from nldsl.module.task_window import stream_windows as run

    return run(model, inputs, targets, state, window=window, loss=loss, scale=scale,
               through_writes=through_writes, end=end)


def freeze(model):
    """The compiled module or nldsl.lm network with every level frozen: no level writes, not
    even a module's own in-context memories (`stream(..., learn=False)` freezes only the
    levels that learn from the task loss), so it is an ordinary network of its parameters and
    the states it is given; it shares the model's parameters (docs/modules.md, "Freezing")."""
    from nldsl.module.freeze import freeze as run

    return run(model)
