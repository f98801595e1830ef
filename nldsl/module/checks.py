"""Clear errors for bad input to a compiled module, before any tensor reaches torch."""
from __future__ import annotations

from typing import NamedTuple

import torch

from nldsl.validation.values import check_hparam_values
from nldsl.language.consteval import hparam_values
from nldsl.errors import NLDSLError

STREAM = "_stream"


def resolve_hparams(spec, given: dict) -> dict:
    """Every hyper-parameter's value: the caller's, else the default. Unknown and missing names
    are errors, and so is a value that breaks its declared type or range or makes a period,
    head count or dim no positive integer (check_hparam_values: located, a ValueError too, the
    unknown names as nldsl.optimizer words them)."""
    decl = spec.decl
    known = [h.name for h in decl.hparams]
    check_hparam_values(spec, given)
    values = hparam_values(decl, given)
    missing = [name for name in known if name not in values]
    if missing:
        raise NLDSLError(f"{decl.name} needs a value for {', '.join(missing)}: "
                         f"nldsl.compile({decl.name!r}, {missing[0]}=...)")
    return values


def reference_tensor(module, x: torch.Tensor | None = None) -> torch.Tensor:
    """The tensor whose dtype and device a module's states take: its first parameter, else its
    first buffer, else the input x (a module with neither runs in x's dtype, as check_input
    lets it), else a float32 zero."""
    for tensors in (module.parameters(), module.buffers()):
        found = next(iter(tensors), None)
        if found is not None:
            return found
    return x if x is not None else torch.zeros(())


def check_input(module, x) -> None:
    dim = module.program.dim
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{module.program.name} takes a tensor x [B, T, {dim}], got {type(x).__name__}")
    if x.ndim != 3 or x.shape[-1] != dim:
        raise ValueError(f"{module.program.name} takes x of shape [B, T, {dim}] (dim={dim}), got "
                         f"{list(x.shape)}")
    ref = next(iter(module.parameters()), None)
    if ref is not None and (x.dtype != ref.dtype or x.device != ref.device):
        raise ValueError(f"x is {x.dtype} on {x.device} but the module's parameters are "
                         f"{ref.dtype} on {ref.device}: call m.to(x) or convert x")


def check_state(module, state, x) -> dict:
    """The state must come from this module (same levels, names, shapes) and batch size."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be the dict a previous call returned, got {type(state).__name__}")
    stream = state.get(STREAM)
    t = stream.get("t", 0) if isinstance(stream, dict) else 0
    expected = _template(module, x.shape[0], t if isinstance(t, int) and t >= 0 else 0, x)
    if set(state) != set(expected):
        raise ValueError(f"this state is not {module.program.name}'s: it has entries "
                         f"{sorted(state)}, expected {sorted(expected)}")
    for key, own in expected.items():
        derived = {n for n in state[key] if n.endswith((".pending", ".chunk_start", ".window"))}
        names = set(state[key]) - derived
        if names != set(own):
            raise ValueError(f"state[{key!r}] has {sorted(names)}, expected {sorted(own)}")
        for name in (n for n in derived if n.endswith(".window")):
            _check_window(module, key, name, state[key][name], x)
        for name, value in own.items():
            given = state[key][name]
            if isinstance(given, torch.Tensor) and isinstance(value, _Meta) and (
                    given.dtype != value.dtype or given.device != value.device):
                raise ValueError(f"state[{key!r}][{name!r}] is {given.dtype} on {given.device} "
                                 f"but the module is {value.dtype} on {value.device}")
            if isinstance(value, _Meta) and (not isinstance(given, torch.Tensor)
                                             or given.shape != value.shape):
                shape = list(given.shape) if isinstance(given, torch.Tensor) else type(given).__name__
                raise ValueError(f"state[{key!r}][{name!r}] has shape {shape}, expected "
                                 f"{list(value.shape)} (batch {x.shape[0]}): a state from "
                                 "another batch size or spec")
    if not isinstance(state[STREAM]["t"], int) or state[STREAM]["t"] < 0:
        raise ValueError("state['_stream']['t'] must be the non-negative count of tokens seen")
    return state


class _Meta(NamedTuple):
    shape: torch.Size
    dtype: torch.dtype
    device: torch.device


def _template(module, batch: int, t: int, x: torch.Tensor) -> dict:
    """The entries of `module.initial_state(batch, t=t)`, a tensor's as its shape, dtype and
    device: what a state must match. Built once per batch, position (a full attention's cache
    grows with t), dtype and device, not per call (the initial state concatenates every MLP
    memory's learned weights)."""
    ref = reference_tensor(module, x)
    key = (batch, t if module.program.attention else 0, ref.dtype, ref.device)
    cache = module.__dict__.setdefault("_state_templates", {})
    if key not in cache:
        with torch.no_grad():
            state = module.initial_state(batch, t=t, like=x)
        cache[key] = {k: {n: _Meta(v.shape, v.dtype, v.device) if isinstance(v, torch.Tensor)
                          else v for n, v in own.items()} for k, own in state.items()}
    return cache[key]


def _check_window(module, key: str, name: str, value, x) -> None:
    """A window's ring buffer: [B, n, ...] with n < c, the level's longest window."""
    level = next((lv for lv in module.program.levels if lv.name == key), None)
    context = name[: -len(".window")]
    if level is None or context not in level.windowed:
        raise ValueError(f"state[{key!r}][{name!r}]: level {key!r} keeps no window of {context!r}")
    if not isinstance(value, torch.Tensor) or value.ndim < 2 or value.shape[0] != x.shape[0] \
            or value.shape[1] >= level.window:
        shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"state[{key!r}][{name!r}] has shape {shape}, expected [{x.shape[0]}, "
                         f"n, ...] with n < {level.window} (batch {x.shape[0]}, window "
                         f"{level.window}): the last tokens' {context}")
