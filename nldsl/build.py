"""AST to level graph: `build(decl) -> LevelGraph`, a pure function that never fails.

Problems (duplicates, unknown names, ...) are the validator's business: the builder keeps the
first definition of a name and moves on, so the validator can report every problem at once.

Timing of references, made precise (docs/language.md, "Frequency semantics"):
- a level that references another level's *state* or *read* needs that level's write of the
  same unit first (a same-unit dependency), unless the read is `before write`;
- a reference to another level's *context* (key, value, query, gate, let) or to `grad(S)` needs
  no write: contexts are computed from the states before the unit's writes;
- in an optimizer, `W` and `grad(W)` outside the level that writes `W` are the parameter and
  gradient this step was given: they are context, not a same-unit dependency.
"""
from __future__ import annotations

from nldsl.language import ast
from nldsl.language.builtins import FUNCTIONS
from nldsl.language.consteval import hparam_values, try_evaluate
from nldsl.graph import OUTER, Edge, LevelGraph, LevelInfo, StateInfo

PARAMETER = "W"


def _items_outside_levels(decl: ast.SpecDecl) -> list:
    return [i for i in decl.items if not isinstance(i, (ast.Level, ast.Output))]


def _updated_names(items) -> list[str]:
    names = []
    for item in items:
        if isinstance(item, ast.Update):
            names.append(item.target)
        elif isinstance(item, ast.Objective) and item.state:
            names.append(item.state)
    return names


def _level(decl: ast.Level | None, name: str, items: list, env: dict) -> dict:
    """The fields of a LevelInfo, from a declared level or the implicit outer level."""
    states, contexts, objectives, updates, reads = {}, {}, [], [], {}
    for item in items:
        if isinstance(item, ast.State):
            states.setdefault(item.name, StateInfo(name=item.name, level=name, decl=item))
        elif isinstance(item, ast.Context):
            contexts.setdefault(item.name, item)
        elif isinstance(item, ast.Objective):
            objectives.append(item)
        elif isinstance(item, ast.Update):
            updates.append(item)
        elif isinstance(item, ast.Read):
            reads.setdefault(item.name, item)
    fields = dict(name=name, states=states, contexts=contexts, objectives=objectives,
                  updates=updates, reads=reads)
    if decl is None:
        return fields | dict(every=ast.Number(value=1), unit="step", period=1, implicit=True)
    period = try_evaluate(decl.every, env)
    return fields | dict(every=decl.every, unit=decl.unit, decl=decl, chunk=decl.chunk,
                         heads=decl.heads, backprop=decl.backprop, partial=decl.partial or "flush",
                         once=decl.once, period=period if isinstance(period, int) else None)


def _parameter_owner(decl: ast.SpecDecl, level_items: dict[str, list]) -> str | None:
    for name, items in level_items.items():
        if PARAMETER in _updated_names(items):
            return name
    return next(iter(level_items), None)


def _parameter_state(level: str) -> StateInfo:
    shape = ast.LikeShape(name=PARAMETER)
    return StateInfo(name=PARAMETER, level=level, implicit=True,
                     decl=ast.State(name=PARAMETER, shape=shape))


def build(decl: ast.SpecDecl) -> LevelGraph:
    """The level graph of a parsed spec (valid or not)."""
    env = hparam_values(decl)
    level_items: dict[str, list] = {}
    level_decls: dict[str, ast.Level | None] = {}
    outer_items = _items_outside_levels(decl)
    if decl.kind == "module" or outer_items:
        level_items[OUTER], level_decls[OUTER] = outer_items, None
    for level in decl.levels:
        level_items.setdefault(level.name, level.items)
        level_decls.setdefault(level.name, level)

    infos = {name: _level(level_decls[name], name, items, env) for name, items in level_items.items()}
    if decl.kind == "optimizer":
        owner = _parameter_owner(decl, level_items)
        if owner is not None and PARAMETER not in infos[owner]["states"]:
            infos[owner]["states"] = {PARAMETER: _parameter_state(owner)} | infos[owner]["states"]

    names = list(infos)
    for index, name in enumerate(names):
        for state_name, state in list(infos[name]["states"].items()):
            init = state.decl.init
            if isinstance(init, ast.InitLearned):
                # a module's plain `init learned` is the outer level's (docs/language.md, as
                # lower/module.py compiles it); an optimizer's, the next slower level's
                default = OUTER if decl.kind == "module" else names[index - 1] if index else None
                teacher = init.by or default
                infos[name]["states"][state_name] = state.model_copy(update={"learned_by": teacher})
    levels = {name: LevelInfo(**fields) for name, fields in infos.items()}
    edges, depends = _edges(decl, levels)
    output = next((i.value for i in decl.items if isinstance(i, ast.Output)), None)
    return LevelGraph(decl, levels, edges, output, depends)


def _owners(levels: dict[str, LevelInfo]) -> dict[str, tuple[str, str]]:
    """name -> (level, what): what is state | context | read | read_before."""
    owners: dict[str, tuple[str, str]] = {}
    for level in levels.values():
        for name in level.states:
            owners.setdefault(name, (level.name, "state"))
        for name in level.contexts:
            owners.setdefault(name, (level.name, "context"))
        for name, read in level.reads.items():
            owners.setdefault(name, (level.name, "read_before" if read.before_write else "read"))
    return owners


def name_references(node, in_grad: bool = False):
    """(name, inside grad()) for every name used under `node`, state calls included, in source
    order. An explicit stack, not recursive generators: a `yield from` chain costs its depth
    per name, so a long sum (a deep left tree) took quadratic time."""
    stack = [(node, in_grad)]
    while stack:
        node, in_grad = stack.pop()
        if isinstance(node, ast.Name):
            yield node.id, in_grad
        elif isinstance(node, ast.Call):
            if node.func not in FUNCTIONS:
                yield node.func, in_grad
            inner = in_grad or node.func == "grad"
            children = [*node.args, *(k.value for k in node.kwargs)]
            stack += [(child, inner) for child in reversed(children)]
        elif isinstance(node, ast.Node):
            fields = [getattr(node, f) for f in type(node).model_fields if f != "span"]
            stack += [(child, in_grad) for child in reversed(fields)]
        elif isinstance(node, (list, tuple)):
            stack += [(item, in_grad) for item in reversed(node)]


def _item_kind(item) -> str:
    return "reads" if isinstance(item, (ast.Update, ast.Read, ast.Output)) else "generates"


def _gradient_source(names: list[str], level: str) -> str | None:
    """Whose gradient flow a `backprop` level joins: the outer level, where the task loss is
    minimised, or else the next slower declared level."""
    if OUTER in names and level != OUTER:
        return OUTER
    index = names.index(level)
    return names[index - 1] if index > 0 else None


def _edges(decl: ast.SpecDecl, levels: dict[str, LevelInfo]):
    owners = _owners(levels)
    found: dict[tuple[str, str, str], tuple[list[str], ast.Span]] = {}
    depends: dict[str, set[str]] = {name: set() for name in levels}
    names = list(levels)

    def add(source: str, target: str, kind: str, via: str, span: ast.Span) -> None:
        carriers, first_span = found.setdefault((source, target, kind), ([], span))
        if via not in carriers:
            carriers.append(via)

    for level in levels.values():
        items = [*level.contexts.values(), *level.objectives, *level.updates, *level.reads.values()]
        items += [s.decl for s in level.states.values() if not s.implicit]
        if level.name == OUTER:
            items += [i for i in decl.items if isinstance(i, ast.Output)]  # `out` is the outer level's
        for item in items:
            for name, in_grad in name_references(item):
                if name not in owners or owners[name][0] == level.name:
                    continue
                source, what = owners[name]
                context_like = in_grad or what in ("context", "read_before")
                is_given_parameter = decl.kind == "optimizer" and name == PARAMETER
                add(source, level.name, "generates" if in_grad else _item_kind(item), name, item.span)
                if not context_like and not is_given_parameter:
                    depends[level.name].add(source)
        for state in level.states.values():
            if state.learned_by in levels:
                add(state.learned_by, level.name, "init", state.name, state.decl.span)
        if level.backprop:
            source = _gradient_source(names, level.name)
            if source is not None:
                add(source, level.name, "backprop", level.name,
                    level.decl.span if level.decl else ast.NO_SPAN)
    edges = [Edge(source=s, target=t, kind=k, via=tuple(v), span=span)
             for (s, t, k), (v, span) in found.items()]
    return edges, depends
