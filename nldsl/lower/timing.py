"""Which level writes at which unit: the one rule of frequency semantics, torch-free.

A level `every N` (units: steps of an optimizer, tokens of a module) writes at the end of each
period, at units N, 2N, 3N, ... (1-based), with the sum of the period's changes; in between its
state keeps its last written value. The reference schedule (optim/interpret.py), the generated
code (optim/codegen.py) and the timeline picture (render/timeline.py) all ask this module.
"""
from __future__ import annotations


def period(value) -> int:
    """A level's period as an int: a positive whole number (an int, or a float like 2.0).
    Anything else is a ValueError naming it (2.7 would silently act as 2, 0 divide by zero)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"a level's period must be a positive whole number, got {value!r}")
    if value != value or value < 1 or value != int(value):
        raise ValueError(f"a level's period must be a positive whole number, got {value!r}")
    return int(value)


def writes_at(every, unit: int) -> bool:
    """Does a level `every N` write at `unit` (1-based)? At the last unit of each period."""
    return unit % period(every) == 0


def write_units(every, window: int) -> range:
    """The units in 1..window at which a level `every N` writes: N, 2N, ..."""
    n = period(every)
    return range(n, window + 1, n)
