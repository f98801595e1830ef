"""What each level shows: its boxes (one per state, one for its context flow), as text rows.

A level's cluster holds
- one box per state: `name : shape`, its initial value, its internal objective and learning
  rule (`min l2(M(k), v)` / `by momentum(...)`), the explicit updates that write it and the
  reads that apply it (`read y = M(q)`); states of one level sit side by side (`=_f`);
- one context box: keys, values, queries, gates and `let` definitions (the context flow);
- in a module's implicit outer level: the input `x`, the parameters the task loss trains
  (grouped by shape, so a dozen projections stay a few lines, and the initial states it
  meta-learns), and the module's output.
Compact labels fold conditionals on constant options (`nldsl.render.specialise`) and cut long
expressions; full labels show everything.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from nldsl.language import ast
from nldsl.language.consteval import calls_in, hparam_values, names_in, try_evaluate
from nldsl.graph import OUTER, LevelGraph, LevelInfo, StateInfo
from nldsl.language.printer import format_arguments, format_expr, format_shape
from nldsl.render.specialise import specialise
from nldsl.render.text import fit, greek, pretty

Tone = Literal["title", "code", "muted"]
WIDTH = {False: 44, True: 64}
OUT = "out"  # the node id of a module's output


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


def _quantity(node: ast.Expr, word: str, env: dict) -> tuple[str, str]:
    """(`64`, ``) for a number; (`64`, ` (f)`) for a symbolic value with a default, with no
    name when it repeats the keyword (`chunk 64`, not `chunk 64 (chunk)`)."""
    text = pretty(format_expr(node))
    value = try_evaluate(node, env)
    if value is None or text == str(value):
        return text, ""
    return str(value), "" if text == word else f" ({text})"


def frequency_parts(graph: LevelGraph, level: LevelInfo) -> list[str]:
    """`["every 1 token", "chunk 64", "heads 4", "backprop"]`: what a level's title says."""
    env = hparam_values(graph.decl)
    plural = "" if level.period == 1 else "s"
    number, name = _quantity(level.every, "every", env)
    parts = [f"every {number} {level.unit}{plural}{name}"]
    for word, node in (("chunk", level.chunk), ("heads", level.heads)):
        if node is not None:
            parts.append(word + " " + "".join(_quantity(node, word, env)))
    if level.backprop:
        parts.append("backprop")
    return parts


def reads_of(level: LevelInfo, state: str | None) -> list[ast.Read]:
    """The reads shown in `state`'s box: those applying exactly that one state of the level;
    with `state=None`, the reads that apply no single state (they go to the context box)."""
    found = []
    for read in level.reads.values():
        applied = [name for name in used_names(read) if name in level.states]
        if (applied[0] if len(applied) == 1 else None) == state:
            found.append(read)
    return found


class Labeller:
    """Builds the boxes of one diagram; `fixed` collects the options compact labels folded."""

    def __init__(self, graph: LevelGraph, full: bool):
        self.graph = graph
        self.full = full
        self.env = hparam_values(graph.decl)
        self.fixed: set[str] = set()

    def expr(self, node: ast.Expr) -> str:
        return pretty(format_expr(node if self.full else specialise(node, self.env, self.fixed)))

    def rows(self, prefix: str, text: str, tone: Tone = "code", lines: int = 2) -> list[Row]:
        """A label item over its lines: all of them in full, at most `lines` when compact."""
        return [Row(line, tone) for line in fit(prefix + text, WIDTH[self.full], self.full, lines)]

    def rule(self, rule: ast.Rule) -> str:
        if not rule.args and not rule.kwargs:
            return rule.name
        args = [a if self.full else specialise(a, self.env, self.fixed) for a in rule.args]
        kwargs = [k if self.full else k.model_copy(update={"value": specialise(
            k.value, self.env, self.fixed)}) for k in rule.kwargs]
        return pretty(f"{rule.name}({format_arguments(args, kwargs)})")

    def objective(self, objective: ast.Objective) -> list[Row]:
        rules = " then ".join(self.rule(rule) for rule in objective.rules)
        return self.rows("min ", self.expr(objective.loss)) + self.rows("by ", rules)

    def state_box(self, level: LevelInfo, state: StateInfo) -> Box:
        box = Box(f"{level.name}.{state.name}", level.name, "state", defines={state.name})
        title = fit(_shape_text(state), WIDTH[self.full] - len(state.name), True)
        box.rows += [Row(title[0], "title", bold=greek(state.name))]
        box.rows += [Row(line, "title") for line in title[1:]]
        init = state.decl.init
        if isinstance(init, ast.InitLearned):
            box.rows.append(Row(f"init learned by {state.learned_by or '?'}", "muted"))
        elif isinstance(init, ast.InitValue) and self.full:
            box.rows.append(Row(f"init {self.expr(init.value)}", "muted"))
        box.uses |= used_names(state.decl)
        for objective in level.objectives:
            if objective.state == state.name or (objective.state is None and len(level.states) == 1):
                box.rows += self.objective(objective)
                box.uses |= used_names(objective)
        for update in level.updates:
            if update.target == state.name:
                box.rows += self.rows(f"{greek(update.target)} ← ", self.expr(update.value))
                box.uses |= used_names(update)
        for read in reads_of(level, state.name):
            self._read(box, read)
        return box

    def _read(self, box: Box, read: ast.Read) -> None:
        suffix = " (before write)" if read.before_write else ""
        box.rows += self.rows(f"read {greek(read.name)} = ", self.expr(read.value) + suffix)
        box.defines.add(read.name)
        box.uses |= used_names(read)

    def context_box(self, level: LevelInfo) -> Box | None:
        box = Box(f"{level.name}.context", level.name, "context")
        for context in level.contexts.values():
            box.rows += self.rows(f"{context.role} {greek(context.name)} = ",
                                  self.expr(context.value), lines=1)
            box.defines.add(context.name)
            box.uses |= used_names(context)
        for read in reads_of(level, None):
            self._read(box, read)
        for objective in level.objectives:
            if objective.state is None and len(level.states) != 1:
                box.rows += self.objective(objective)
        return box if box.rows else None

    def params_box(self, level: LevelInfo) -> Box | None:
        """The outer level's parameters, one row per shape (`Wk, Wv : [dim, dim]`), and the
        initial states it meta-learns."""
        taught = [s.name for s in self.graph.states() if s.learned_by == level.name]
        if not level.states and not taught:
            return None
        groups: dict[str, list[str]] = {}
        for state in level.states.values():
            groups.setdefault(_shape_text(state), []).append(greek(state.name))
        box = Box(f"{level.name}.params", level.name, "params", defines=set(level.states))
        box.rows += [Row("", "title", bold="parameters"), Row("trained by the task loss", "muted")]
        for shape, names in groups.items():
            box.rows += self.rows(", ".join(names), shape)
        if taught:
            box.rows += self.rows("initial states of ", ", ".join(map(greek, taught)), "muted")
        for state in level.states.values():
            box.uses |= used_names(state.decl)
        return box

    def input_box(self) -> Box:
        """A module's input: the token stream `x` every level's context flow starts from."""
        box = Box("x", OUTER, "input", defines={"x"})
        box.rows += [Row(" : [B, T, dim]", "title", bold="x"), Row("the input tokens", "muted")]
        return box

    def output_box(self) -> Box | None:
        if self.graph.output is None:
            return None
        box = Box(OUT, next(iter(self.graph.levels)), "output", defines={OUT})
        box.rows += self.rows("out = ", self.expr(self.graph.output))
        box.uses |= used_names(self.graph.output)
        return box

    def level_boxes(self, level: LevelInfo) -> list[Box]:
        """A level's boxes in drawing order: context, then states (or input, parameters, out)."""
        boxes: list[Box | None] = [self.context_box(level)]
        if level.implicit:
            inputs = [self.input_box()] if self.graph.kind == "module" else []
            boxes += [*inputs, self.params_box(level), self.output_box()]
        else:
            boxes += [self.state_box(level, state) for state in level.states.values()]
        return [box for box in boxes if box is not None]


def _shape_text(state: StateInfo) -> str:
    if state.implicit:
        return " : the parameters"
    if isinstance(state.decl.shape, ast.LikeShape):
        return " " + format_shape(state.decl.shape)
    return pretty(format_shape(state.decl.shape).replace(": ", " : ", 1))
