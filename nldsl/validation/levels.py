"""Levels: frequencies and their nesting, same-unit conflicts, learned initial states, and what
each objective and update acts on."""
from __future__ import annotations

import re

import networkx as nx

from nldsl.language import ast
from nldsl.build import PARAMETER, name_references
from nldsl.language.builtins import TASK
from nldsl.validation.common import Checker
from nldsl.validation.names import rotate_to_first
from nldsl.language.consteval import hparam_values, try_evaluate
from nldsl.graph import LevelInfo

MSG_NOT_POSITIVE_INT = "{what} must be a positive integer, got {value!r}"
MSG_UNIT = "{kind} levels count {expected}, not {unit}s"
_UNIT_HINT = {"optimizer": "an optimizer's time unit is one step (one call of `step()`)",
              "module": "a module's time unit is one token; the task optimizer's steps belong to "
                        "the implicit outer level"}
_UNIT_WORD = re.compile(r"\s*(steps|step|tokens|token)\b")
MSG_ORDER = ("levels are listed slow to fast, but {fast!r} ({fast_freq}) comes before the slower "
             "{slow!r} ({slow_freq})")
MSG_CHUNK = "chunk {chunk} does not fit level {name!r}, which writes every {period} {unit}s"
MSG_NEST = "periods do not nest: {a!r} writes every {pa} {unit}s and {b!r} every {pb}"
MSG_CONFLICT = "frequency conflict: these levels need each other's state in the same unit: {path}"
MSG_NO_TEACHER = "state {name!r} has a learned initial state but no slower level learns it"
MSG_BAD_TEACHER = "state {name!r} is learned by {teacher!r}, which is not a slower level"
MSG_NO_STATE = "the objective does not depend on {state!r}, the state it trains"
MSG_WHICH_STATE = "level {level!r} has {count} states; say which one this objective trains"


def _positive_int(c: Checker, node: ast.Expr | None, what: str, example: str, env: dict) -> None:
    value = try_evaluate(node, env)
    if node is not None and value is not None and (
            isinstance(value, bool) or not (isinstance(value, int) and value >= 1)):
        c.report(node, MSG_NOT_POSITIVE_INT.format(what=what, value=value),
                 expected="an integer >= 1", hint=f"e.g. `{example}`")


def _frequency_span(c: Checker, decl: ast.Level) -> ast.Span:
    """`every N unit`: from N to the end of the unit word (the AST keeps no span for the unit)."""
    start, end = decl.every.span, decl.every.span
    match = _UNIT_WORD.match(c.source.line(end.end_line), end.end_col - 1)
    end_col = match.end() + 1 if match else end.end_col
    return ast.Span(line=start.line, col=start.col, end_line=end.end_line, end_col=end_col)


def _check_chunk_multiple(c: Checker, level: LevelInfo, env: dict) -> None:
    """A level written every N units takes its gradients at chunk starts that are write
    boundaries, so its chunk must be a multiple of N (docs/language.md, chunk semantics)."""
    chunk = try_evaluate(level.chunk, env)
    if isinstance(chunk, int) and chunk >= 1 and level.period and chunk % level.period:
        c.report(level.chunk, MSG_CHUNK.format(chunk=chunk, name=level.name, period=level.period,
                                  unit=level.unit),
                 expected=f"a multiple of {level.period}",
                 hint=f"use `chunk {level.period * max(1, round(chunk / level.period))}`, or "
                      f"leave `chunk` out: it defaults to the period")


def check_frequencies(c: Checker) -> None:
    env = hparam_values(c.decl)
    declared = [lv for lv in c.graph.levels.values() if not lv.implicit]
    expected_unit = "step" if c.decl.kind == "optimizer" else "token"
    for level in declared:
        decl = level.decl
        _positive_int(c, decl.every, "a level's period", f"every 4 {expected_unit}s", env)
        _positive_int(c, decl.chunk, "chunk", "chunk 64", env)
        _positive_int(c, decl.heads, "heads", "heads 4", env)
        if level.unit != expected_unit:
            c.report(_frequency_span(c, decl), MSG_UNIT.format(
                kind=c.decl.kind, expected=expected_unit + "s", unit=level.unit),
                expected=f"`every N {expected_unit}s`", hint=_UNIT_HINT[c.decl.kind])
        if decl.chunk is not None and level.unit != "token":
            c.report(decl.chunk, "`chunk` applies to per-token levels only",
                     expected="`every N tokens chunk C`", hint="remove `chunk` from a step level")
        if decl.heads is not None and level.unit != "token":
            c.report(decl.heads, "`heads` applies to per-token levels only",
                     expected="`every N tokens heads H`", hint="an optimizer's step acts on one "
                     "parameter tensor at a time; remove `heads` from a step level")
        _check_chunk_multiple(c, level, env)
    for earlier, later in zip(declared, declared[1:]):
        if earlier.period and later.period and earlier.rank < later.rank:
            c.report(later.decl, MSG_ORDER.format(fast=earlier.name, slow=later.name,
                                                  fast_freq=earlier.frequency_label(),
                                                  slow_freq=later.frequency_label()),
                     expected="slower levels first", hint=f"move level {later.name!r} above "
                     f"{earlier.name!r}")
    _check_nesting(c, declared, expected_unit)
    _check_conflicts(c)


def _check_nesting(c: Checker, levels: list[LevelInfo], unit: str) -> None:
    known = sorted({(lv.unit, lv.period): lv for lv in levels if lv.period}.values(),
                   key=lambda lv: lv.rank)
    for i, fast in enumerate(known):
        for slow in known[i + 1:]:
            if fast.unit == slow.unit and slow.period % fast.period:
                c.report(slow.decl.every, MSG_NEST.format(a=slow.name, pa=slow.period, unit=slow.unit,
                                                          b=fast.name, pb=fast.period),
                         expected=f"a multiple of {fast.period}",
                         hint="every slower period must be a multiple of every faster one, so "
                              "each slow write lands on a fast write")


def _check_conflicts(c: Checker) -> None:
    for group in c.graph.levels_by_frequency():
        deps = nx.DiGraph()
        for name in group:
            deps.add_edges_from((name, d) for d in c.graph.depends_on(name) if d in group)
        for cycle in nx.simple_cycles(deps):
            cycle = rotate_to_first(cycle, list(c.graph.levels))
            path = " -> ".join([*cycle, cycle[0]])
            level = c.graph.levels[cycle[0]]
            c.report(level.decl or c.decl, MSG_CONFLICT.format(path=path),
                     expected="at most one direction of same-unit dependency",
                     hint="read the other level's state before its write (`read ... before "
                          "write`, or one of its contexts), or give the levels different "
                          "frequencies")
            break


def check_learned_inits(c: Checker) -> None:
    for state in c.graph.states():
        init = state.decl.init
        if not isinstance(init, ast.InitLearned):
            continue
        teacher = c.graph.levels.get(state.learned_by) if state.learned_by else None
        student = c.graph.levels[state.level]
        if teacher is None and init.by is None:
            c.report(init, MSG_NO_TEACHER.format(name=state.name), expected="a slower level above "
                     "this one", hint="add a slower level, or give the state a fixed initial value")
        elif teacher is None:
            c.report(init, f"unknown level {init.by!r}", expected="the name of a slower level",
                     hint=c.suggest(init.by, c.graph.levels) or "write `init learned` to have the "
                     "outer level learn it (in an optimizer: the next slower level)")
        elif teacher.period and student.period and teacher.rank <= student.rank:
            c.report(init, MSG_BAD_TEACHER.format(name=state.name, teacher=teacher.name),
                     expected="a level that writes less often than " + repr(student.name),
                     hint="meta-learning an initial state is the job of a slower level")


def _transitive_names(expr: ast.Expr, level: LevelInfo) -> set[str]:
    """Names `expr` uses, following the level's own definitions (`let w = f(A)` uses A)."""
    used: set[str] = set()
    pending = [name for name, _ in name_references(expr)]
    while pending:
        name = pending.pop()
        if name in used:
            continue
        used.add(name)
        if name in level.contexts:
            pending += [n for n, _ in name_references(level.contexts[name].value)]
    return used


def _example_loss(level: LevelInfo, state: str) -> str:
    """A loss that trains `state`: a memory regresses values on keys, a buffer tracks a signal."""
    if isinstance(level.states[state].decl.shape, (ast.TensorShape, ast.MLPShape)):
        return f"l2({state}(k), v)"
    return f"-dot({state}, g)"


def _trainable(level: LevelInfo) -> list[str]:
    return list(level.states)


def _check_one_write_per_state(c: Checker, level, trainable: list[str]) -> None:
    """A state has one write per unit: an objective or an explicit update, never both or two
    of one kind (the compilers would run one of them and silently drop the other)."""
    first: dict[str, object] = {}
    writes = [(o.state or (trainable[0] if len(trainable) == 1 else None), o) for o in level.objectives]
    writes += [(u.target, u) for u in level.updates]
    for target, node in writes:
        if target is None:
            continue
        if target in first:
            line = first[target].span.line
            c.report(node, f"state {target!r} is written twice in level {level.name!r} (first at "
                     f"line {line})", expected="one objective or one `<-` update per state",
                     hint="combine them: add the losses in one `minimize`, or write the update "
                     "out in one `<-`")
        else:
            first[target] = node


def _check_own_reads(c: Checker, level: LevelInfo) -> None:
    """A level's plain reads come after its writes (docs/language.md, ordering within a unit),
    so a write that uses one directly is a same-unit cycle. Through a context it is not: a
    context is computed before the writes, so it sees the read's value from the states before
    them (tests/test_optim_schedules.py, SNAPSHOT_SPEC)."""
    after = {name for name, read in level.reads.items() if not read.before_write}
    if not after:
        return
    writes = [(o, [o.loss, *(a for r in o.rules for a in [*r.args, *(k.value for k in r.kwargs)])])
              for o in level.objectives] + [(u, [u.value]) for u in level.updates]
    for node, parts in writes:
        used = {name for p in parts for name, _ in name_references(p)} & after
        for name in sorted(used):
            c.report(node, f"this write uses {name!r}, a read of its own level {level.name!r}, "
                     "which is computed after the level's writes", expected=f"`read {name} = ... "
                     "before write`, a state or a context", hint=f"mark {name} `before write`, "
                     "or write its expression here (a same-unit cycle otherwise)")


def check_objectives(c: Checker) -> None:
    for level in c.graph.levels.values():
        states = _trainable(level)
        for objective in level.objectives:
            target = objective.state
            if target is None:
                if len(states) != 1:
                    c.report(objective, MSG_WHICH_STATE.format(level=level.name, count=len(states)),
                             expected="`NAME: minimize ...`", hint="prefix the objective with the "
                             "state it trains, e.g. `M: minimize l2(M(k), v) by gd(lr)`")
                    continue
                target = states[0]
            elif target not in level.states:
                c.report(objective, f"{target!r} is not a state of level {level.name!r}",
                         expected=f"one of: {', '.join(states) or '(no states)'}",
                         hint="an objective trains a state of its own level")
                continue
            used = _transitive_names(objective.loss, level)
            if TASK not in used and target not in used:
                c.report(objective.loss, MSG_NO_STATE.format(state=target),
                         expected=f"a loss that uses {target!r}, e.g. {_example_loss(level, target)}",
                         hint="the gradient of this loss with respect to the state is zero, so "
                              "the state would never change")
        _check_one_write_per_state(c, level, states)
        _check_own_reads(c, level)
        for update in level.updates:
            if update.target not in level.states:
                owner = c.graph.owner(update.target)
                where = f" (it belongs to level {owner!r})" if owner else ""
                c.report(update, f"{update.target!r} is not a state of level {level.name!r}{where}",
                         expected="a state declared in this level",
                         hint="a level writes only its own states")
    if c.decl.kind == "optimizer" and not any(
            PARAMETER in [u.target for u in lv.updates] + [o.state for o in lv.objectives]
            or (PARAMETER in lv.states and lv.objectives and not any(o.state for o in lv.objectives))
            for lv in c.graph.levels.values()):
        c.report(c.decl, "this optimizer never updates the parameter `W`",
                 expected="a level with `W <- ...` or `W: minimize task by ...`",
                 hint="add a level that writes W, e.g. `level weights every 1 step { W <- W - lr * m }`")


#: The rules a `once` level may take its one step per period with: their arguments are one
#: value per period (evaluated at the write), which `dgd`'s per-token key norm is not.
ONCE_RULES = ("gd", "momentum", "ema")


def check_once(c: Checker) -> None:
    """`once` (one rule step per period) is for token levels whose writes are learning rules."""
    for level in c.graph.levels.values():
        if level.decl is None or not level.decl.once:
            continue
        if level.unit != "token":
            c.report(level.decl, f"level {level.name!r} is `once`, but only token levels take "
                     "one step per period", expected="`once` on a `level ... every N tokens`",
                     hint="an optimizer level already takes one step per write")
        for update in level.updates:
            c.report(update, f"an explicit update in the `once` level {level.name!r}",
                     expected="objectives with a learning rule (gd, momentum, ema)",
                     hint="`once` sums the period's gradients for one rule step; an explicit "
                          "update has no gradient to sum")
        for objective in level.objectives:
            for rule in objective.rules:
                if rule.name not in ONCE_RULES:
                    c.report(rule, f"`{rule.name}` in the `once` level {level.name!r}",
                             expected=", ".join(ONCE_RULES), hint="dgd's step size depends on "
                             "each token's key; use gd, or drop `once`")
