"""Which level writes at which unit, and when within a unit each value is evaluated: the one
rule of frequency semantics, torch-free.

A level `every N` (units: steps of an optimizer, tokens of a module) writes at the end of each
period, at units N, 2N, 3N, ... (1-based), with the sum of the period's changes; in between its
state keeps its last written value. The reference schedule (optim/interpret.py), the generated
code (optim/codegen.py) and the timeline picture (render/timeline.py) all ask this module.

Within one token of a module (docs/language.md, "Frequency and chunk semantics") every context
is evaluated once, before any level writes; a read is evaluated after its level's write, and a
context it uses keeps the value from before the write. `placements` says, per context and read,
which states that value sees; the module reference asks it (nldsl/module/unit.py).
"""
from __future__ import annotations

from nldsl.language import ast
from nldsl.language.consteval import calls_in, names_in
from nldsl.lower.program import AFTER_WRITE, BEFORE_WRITE, BEFORE_WRITES, INPUT, SNAPSHOT, \
    Placement


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


def placements(level, levels, outer_contexts: dict[str, ast.Expr]) -> dict[str, Placement]:
    """context or read of `level` -> its Placement. `levels` are all token levels (anything
    with `states`, `hidden`, `contexts`, `reads`); a context's stage follows from the states it
    depends on, through other contexts and reads: none (input), the level's own (the
    chunk-start snapshot), only other levels' (as they were before this token's writes)."""
    owner = {name: lv.name for lv in levels for name in list(lv.states) + list(lv.hidden)}
    definitions = dict(outer_contexts)
    for lv in levels:
        definitions.update(lv.contexts)
        definitions.update({name: value for name, (value, _) in lv.reads.items()})
    contexts = set(outer_contexts) | {name for lv in levels for name in lv.contexts}
    found = {}
    for name, value in list(level.contexts.items()) + [(n, v) for n, (v, _) in level.reads.items()]:
        states, used = _closure(value, definitions, owner, contexts)
        if name in level.reads:
            stage = BEFORE_WRITE if level.reads[name][1] else AFTER_WRITE
        elif not states:
            stage = INPUT
        elif any(owner[s] == level.name for s in states):
            stage = SNAPSHOT
        else:
            stage = BEFORE_WRITES
        found[name] = Placement(stage, tuple(sorted(states)), tuple(sorted(used)))
    return found


def _closure(expr: ast.Expr, definitions: dict, owner: dict, contexts: set):
    """(the fast states, the contexts) `expr` depends on, following definitions."""
    states, used, seen = set(), set(), set()
    todo = [expr]
    while todo:
        node = todo.pop()
        names = {n.id for n in names_in(node)} | {c.func for c in calls_in(node)}
        for name in names - seen:
            seen.add(name)
            if name in owner:
                states.add(name)
            if name in contexts:
                used.add(name)
            if name in definitions:
                todo.append(definitions[name])
    return states, used


def snapshot_reads(levels) -> set[str]:
    """The `read ... before write` of `mlp` levels with chunk C > 1: inside one chunk of such a
    level they read its chunk-start state, the same for every token, so a schedule that runs
    one chunk at a time knows them before the level writes (Titans MAC's h = M*_{t-1}(q))."""
    return {name for lv in levels if lv.chunk > 1 and any(s.mlp for s in lv.states.values())
            for name, (_, before) in lv.reads.items() if before}


def states_through(expr: ast.Expr, levels, outer_contexts: dict, leaves=frozenset()):
    """(the fast states, the `leaves`) expr depends on through contexts and reads, without
    looking inside the leaves."""
    owner = {name: lv.name for lv in levels for name in list(lv.states) + list(lv.hidden)}
    definitions = dict(outer_contexts)
    for lv in levels:
        definitions.update(lv.contexts)
        definitions.update({name: value for name, (value, _) in lv.reads.items()})
    for leaf in leaves:
        definitions.pop(leaf, None)
    states, _ = _closure(expr, definitions, owner, set())
    found, seen, todo = set(), set(), [expr]
    while todo:
        node = todo.pop()
        for name in ({n.id for n in names_in(node)} | {c.func for c in calls_in(node)}) - seen:
            seen.add(name)
            found |= {name} & set(leaves)
            if name in definitions:
                todo.append(definitions[name])
    return states, found
