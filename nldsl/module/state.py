"""The fast state as users see it, and as the schedules keep it.

The schedules keep an MLP memory flat, [B, (H,) P] (lower/program.py, `MLPLayout`); a user
sees it by layer, a tuple of weights [B, (H,) d_out, d_in] (docs/modules.md, "State"), so a
memory can be looked into, saved and resumed by its weights. The same holds for every entry
derived from the state: its rules' buffers, chunk-start snapshot and pending sum.
"""
from __future__ import annotations

import torch

from nldsl.lower.program import MLPLayout, Program
from nldsl.runtime import mlp

_DERIVED = ("", ".chunk_start", ".pending")


def _mlp_entries(program: Program):
    """(level, entry, layout) for every state entry that holds MLP weights: the state, its
    snapshot and pending sum, and its rules' buffers (momentum, a chain's)."""
    for level in program.levels:
        for state in level.states.values():
            if state.mlp is not None:
                for suffix in _DERIVED:
                    yield level.name, state.name + suffix, state.mlp
                for hidden in level.hidden:
                    if level.buffer_state(hidden) == state.name:
                        yield level.name, hidden, state.mlp


def to_public(program: Program, state: dict) -> dict:
    """Flat MLP entries -> one tensor per layer."""
    state = {key: dict(value) for key, value in state.items()}
    for level, entry, layout in _mlp_entries(program):
        value = state[level].get(entry)
        if isinstance(value, torch.Tensor):
            state[level][entry] = mlp.layers(layout, value)
    return state


def to_internal(program: Program, state: dict) -> dict:
    """One tensor per layer -> flat MLP entries; a wrong number of layers or layer shape is a
    ValueError naming the entry (never a shape error from inside the schedule)."""
    if not isinstance(state, dict):
        return state
    state = {key: dict(value) if isinstance(value, dict) else value for key, value in state.items()}
    for level, entry, layout in _mlp_entries(program):
        own = state.get(level)
        if not isinstance(own, dict) or entry not in own:
            continue
        own[entry] = _flat(layout, own[entry], f"state[{level!r}][{entry!r}]")
    return state


def _flat(layout: MLPLayout, weights, where: str) -> torch.Tensor:
    expected = lambda: [f"[..., {', '.join(map(str, shape))}]" for shape in layout.parts]
    if not isinstance(weights, (tuple, list)) or len(weights) != len(layout.parts):
        what = "weights" + (" and layernorm's gamma" if layout.norm else "")
        raise ValueError(f"{where} is an MLP memory: a tuple of {len(layout.parts)} {what} "
                         f"({', '.join(expected())}), got " + (f"{len(weights)}" if isinstance(
                             weights, (tuple, list)) else type(weights).__name__))
    lead = None
    for i, (weight, shape) in enumerate(zip(weights, layout.parts)):
        rank = len(shape)
        if not isinstance(weight, torch.Tensor) or weight.ndim < rank or \
                tuple(weight.shape[-rank:]) != shape or \
                (lead is not None and weight.shape[:-rank] != lead):
            found = list(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__
            part = f"layer {i + 1}" if rank == 2 else "layernorm's gamma"
            raise ValueError(f"{where}: {part} has shape {found}, expected "
                             f"{expected()[i]} with the same leading dims as layer 1")
        lead = weight.shape[:-rank]
    return mlp.flatten(layout, weights)
