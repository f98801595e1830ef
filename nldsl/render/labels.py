"""What each level shows: its boxes (one per state, one for its context flow), as text rows.

A level's cluster holds
- one box per state: `name : shape`, its initial value, its internal objective and learning
  rule (`min l2(M(k), v)` / `by momentum(...)`), the explicit updates that write it and the
  reads that apply it (`read y = M(q)`); states of one level sit side by side (`=_f`);
- one context box: keys, values, queries, gates and `let` definitions (the context flow);
- in a module's implicit outer level, one box for the parameters the task loss trains (grouped
  by shape, so a dozen projections stay a few lines) and one for the module's output.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from nldsl import ast
from nldsl.consteval import calls_in, hparam_values, names_in, try_evaluate
from nldsl.graph import LevelGraph, LevelInfo, StateInfo
from nldsl.printer import format_expr, format_rule, format_shape
from nldsl.render.text import fit, pretty, expr, greek

Tone = Literal["title", "code", "muted"]
WIDTH = {False: 44, True: 64}


@dataclass(frozen=True)
class Row:
    """One label line; `bold` is printed bold in front of `text`."""

    text: str
    tone: Tone = "code"
    bold: str = ""


@dataclass
class Box:
    """A node of the diagram: the rows it shows, the names it defines and the names it uses."""

    id: str
    level: str
    kind: Literal["state", "context", "params", "input", "output"]
    rows: list[Row] = field(default_factory=list)
    defines: set[str] = field(default_factory=set)
    uses: set[str] = field(default_factory=set)


def used_names(node) -> set[str]:
    return {n.id for n in names_in(node)} | {c.func for c in calls_in(node)}


def _quantity(node: ast.Expr, word: str, env: dict) -> str:
    """`64`; `f = 10` for a symbolic value with a default; `chunk 64`, not `chunk chunk = 64`."""
    text = pretty(format_expr(node))
    value = try_evaluate(node, env)
    if value is None or text == str(value):
        return text
    return str(value) if text == word else f"{text} = {value}"


def frequency_parts(graph: LevelGraph, level: LevelInfo) -> list[str]:
    """`["every 1 token", "chunk 64", "heads 4", "backprop"]`: what a level's title says."""
    env = hparam_values(graph.decl)
    plural = "" if level.period == 1 else "s"
    parts = [f"every {_quantity(level.every, 'every', env)} {level.unit}{plural}"]
    if level.chunk is not None:
        parts.append(f"chunk {_quantity(level.chunk, 'chunk', env)}")
    if level.heads is not None:
        parts.append(f"heads {_quantity(level.heads, 'heads', env)}")
    if level.backprop:
        parts.append("backprop")
    return parts


def _rows(prefix: str, text: str, full: bool, tone: Tone = "code", lines: int = 2) -> list[Row]:
    """A label item over its lines: all of them in `full`, at most `lines` when compact."""
    return [Row(line, tone) for line in fit(prefix + text, WIDTH[full], full, lines)]


def _shape_text(state: StateInfo) -> str:
    if state.implicit:
        return " : the parameters"
    return pretty(format_shape(state.decl.shape).replace(": ", " : ", 1)
                  if not isinstance(state.decl.shape, ast.LikeShape)
                  else " " + format_shape(state.decl.shape))


def _init_text(state: StateInfo) -> str | None:
    init = state.decl.init
    if isinstance(init, ast.InitValue):
        return f"init {expr(init.value)}"
    if isinstance(init, ast.InitLearned):
        return f"init learned by {state.learned_by or '?'}"
    return None


def _objective_rows(objective: ast.Objective, full: bool) -> list[Row]:
    rules = " then ".join(pretty(format_rule(rule)) for rule in objective.rules)
    return _rows("min ", expr(objective.loss), full) + _rows("by ", rules, full)


def state_box(level: LevelInfo, state: StateInfo, full: bool) -> Box:
    box = Box(f"{level.name}.{state.name}", level.name, "state", defines={state.name})
    title_lines = fit(_shape_text(state), WIDTH[full] - len(state.name), True)
    box.rows.append(Row(title_lines[0], "title", bold=greek(state.name)))
    box.rows += [Row(line, "title") for line in title_lines[1:]]
    init = _init_text(state)
    if init and (full or not isinstance(state.decl.init, ast.InitValue)):
        box.rows.append(Row(init, "muted"))
    box.uses |= used_names(state.decl)
    only_state = len(level.states) == 1
    for objective in level.objectives:
        if objective.state == state.name or (objective.state is None and only_state):
            box.rows += _objective_rows(objective, full)
            box.uses |= used_names(objective)
    for update in level.updates:
        if update.target == state.name:
            box.rows += _rows(f"{greek(update.target)} ← ", expr(update.value), full)
            box.uses |= used_names(update)
    for read in reads_of(level, state.name):
        suffix = " (before write)" if read.before_write else ""
        box.rows += _rows(f"read {greek(read.name)} = ", expr(read.value) + suffix, full)
        box.defines.add(read.name)
        box.uses |= used_names(read)
    return box


def reads_of(level: LevelInfo, state: str | None) -> list[ast.Read]:
    """The reads shown in `state`'s box: those applying exactly that one state of the level;
    with `state=None`, the reads that apply no single state (they go to the context box)."""
    found = []
    for read in level.reads.values():
        applied = [name for name in used_names(read) if name in level.states]
        owner = applied[0] if len(applied) == 1 else None
        if owner == state:
            found.append(read)
    return found


def context_box(level: LevelInfo, full: bool) -> Box | None:
    box = Box(f"{level.name}.context", level.name, "context")
    for context in level.contexts.values():
        box.rows += _rows(f"{context.role} {greek(context.name)} = ", expr(context.value), full,
                          lines=1)
        box.defines.add(context.name)
        box.uses |= used_names(context)
    for read in reads_of(level, None):
        box.rows += _rows(f"read {greek(read.name)} = ", expr(read.value), full)
        box.defines.add(read.name)
        box.uses |= used_names(read)
    stray = [o for o in level.objectives if o.state is None and len(level.states) != 1]
    for objective in stray:
        box.rows += _objective_rows(objective, full)
    return box if box.rows else None


def params_box(level: LevelInfo, full: bool) -> Box | None:
    """The outer level's parameters, one row per shape: `Wk, Wv, Wq : [dim, heads * head_dim]`."""
    if not level.states:
        return None
    groups: dict[str, list[str]] = {}
    for state in level.states.values():
        groups.setdefault(_shape_text(state), []).append(greek(state.name))
    box = Box(f"{level.name}.params", level.name, "params", defines=set(level.states))
    box.rows += [Row("", "title", bold="parameters"), Row("trained by the task loss", "muted")]
    for shape, names in groups.items():
        box.rows += _rows(", ".join(names), shape, full)
    for state in level.states.values():
        box.uses |= used_names(state.decl)
    return box


def input_box(graph: LevelGraph) -> Box:
    """A module's input: the token stream `x` every level's context flow starts from."""
    box = Box("x", next(iter(graph.levels)), "input", defines={"x"})
    box.rows += [Row(" : [B, T, dim]", "title", bold="x"), Row("the input tokens", "muted")]
    return box


def output_box(graph: LevelGraph, full: bool) -> Box | None:
    if graph.output is None:
        return None
    box = Box("out", next(iter(graph.levels)), "output", defines={"out"})
    box.rows += _rows("out = ", expr(graph.output), full)
    box.uses |= used_names(graph.output)
    return box


def level_boxes(graph: LevelGraph, level: LevelInfo, full: bool) -> list[Box]:
    """A level's boxes in drawing order: context, then states (or parameters and output)."""
    boxes: list[Box | None] = [context_box(level, full)]
    if level.implicit:
        inputs = [input_box(graph)] if graph.kind == "module" else []
        boxes += [*inputs, params_box(level, full), output_box(graph, full)]
    else:
        boxes += [state_box(level, state, full) for state in level.states.values()]
    return [box for box in boxes if box is not None]
