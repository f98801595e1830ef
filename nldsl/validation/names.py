"""Names: duplicates, unknown names (with suggestions), calls and their arity, definition cycles."""
from __future__ import annotations

import networkx as nx

from nldsl.language import ast
from nldsl.build import name_references
from nldsl.language.builtins import EXPRESSION, FUNCTIONS, INIT, OBJECTIVE, TASK
from nldsl.validation.common import Checker
from nldsl.language.memories import memory_layouts

MSG_DUPLICATE = "{what} {name!r} is defined twice"
MSG_UNKNOWN = "unknown name {name!r}"
MSG_NOT_HPARAM = "a constraint can name only hyper-parameters, and {name!r} is none"
MSG_UNKNOWN_FUNCTION = "unknown function {name!r}"
MSG_NOT_CALLABLE = "{name!r} is not a memory state, so it cannot be applied to an input"
MSG_ARITY = "{name}() takes {expected} argument{s}, got {got}"
MSG_TASK_OUTSIDE = "`task` (the outer loss) can only be an objective"
MSG_CYCLE = "definitions form a cycle: {path}"


def _definitions(decl: ast.SpecDecl):
    """(name, what, node) for every name the spec defines, in source order."""
    for hparam in decl.hparams:
        yield hparam.name, "hyper-parameter", hparam
    for item in decl.items:
        if isinstance(item, ast.Level):
            yield item.name, "level", item
            yield from _item_definitions(item.items)
        else:
            yield from _item_definitions([item])


def _item_definitions(items):
    for item in items:
        if isinstance(item, ast.State):
            yield item.name, "state", item
        elif isinstance(item, ast.Context):
            yield item.name, item.role, item
        elif isinstance(item, ast.Read):
            yield item.name, "read", item


def check_duplicates(c: Checker) -> None:
    seen: dict[str, ast.Node] = {}
    levels: set[str] = set()
    implicit = c.implicit_names()
    for name, what, node in _definitions(c.decl):
        if what == "level":
            if name in levels:
                c.report(node, MSG_DUPLICATE.format(what="level", name=name),
                         expected="a unique level name", hint="rename one of the levels")
            levels.add(name)
            continue
        if name in implicit or name in FUNCTIONS or name == TASK:
            c.report(node, f"{what} {name!r} shadows a built-in name",
                     expected="a name that is not built in", hint=f"rename it, e.g. {name + '_'!r}")
        elif name in seen:
            first = seen[name].span.line
            c.report(node, MSG_DUPLICATE.format(what=what, name=name),
                     expected="each name defined once in a spec",
                     hint=f"the first definition is on line {first}; rename one of them")
        else:
            seen[name] = node


def _constraint_values(constraint: ast.Constraint) -> list[ast.Expr]:
    if isinstance(constraint, ast.Bound):
        return [constraint.value]
    if isinstance(constraint, ast.Interval):
        return [constraint.low, constraint.high]
    return list(constraint.options)


def expressions(c: Checker):
    """(expression, place) for every expression a user wrote; the place (builtins.EXPRESSION,
    OBJECTIVE or INIT) says which built-ins it may use, and `task` is an objective."""
    for hparam in c.decl.hparams:
        if hparam.default is not None:
            yield hparam.default, EXPRESSION
    for level in c.graph.levels.values():
        if level.decl is not None:
            yield level.decl.every, EXPRESSION
            for option in (level.decl.chunk, level.decl.heads):
                if option is not None:
                    yield option, EXPRESSION
        for state in level.states.values():
            shape, init = state.decl.shape, state.decl.init
            for dim in getattr(shape, "dims", []) + getattr(shape, "widths", []):
                yield dim, EXPRESSION
            if isinstance(init, ast.InitValue):
                yield init.value, INIT
        for context in level.contexts.values():
            yield context.value, EXPRESSION
        for objective in level.objectives:
            yield objective.loss, OBJECTIVE
            for rule in objective.rules:
                for arg in [*rule.args, *(k.value for k in rule.kwargs)]:
                    yield arg, EXPRESSION
        for update in level.updates:
            yield update.value, EXPRESSION
        for read in level.reads.values():
            yield read.value, EXPRESSION
    if c.graph.output is not None:
        yield c.graph.output, EXPRESSION


def check_references(c: Checker) -> None:
    defined = c.defined_names()
    callable_states = {s.name for s in c.graph.states() if not isinstance(s.decl.shape, ast.ScalarShape)}
    callable_states |= set(memory_layouts(c.graph))         # a let that holds an MLP: W(k)
    for expr, place in expressions(c):
        _check_expr(c, expr, defined, callable_states, place == OBJECTIVE)
    _check_constraints(c)
    _check_like_shapes(c)


def _check_constraints(c: Checker) -> None:
    """A constraint is checked against the hyper-parameters' values before anything runs, so
    it may name only hyper-parameters (`lr = 0.1 >= min_lr`)."""
    hparams, defined = set(c.graph.hparams), c.defined_names()
    for hparam in c.decl.hparams:
        for constraint in hparam.constraints:
            for value in _constraint_values(constraint):
                for node in _names_in(value):
                    if node.id not in hparams:
                        message = (MSG_NOT_HPARAM if node.id in defined else MSG_UNKNOWN)
                        c.report(node, message.format(name=node.id), expected="a constant or "
                                 "a hyper-parameter's name in a constraint",
                                 hint=c.suggest(node.id, hparams) or
                                 f"declare {node.id!r} as a hyper-parameter, or write a number")


def _names_in(node):
    """The `Name` nodes under a constraint's value, in source order."""
    if isinstance(node, ast.Name):
        yield node
    elif isinstance(node, ast.Node):
        for field in type(node).model_fields:
            if field != "span":
                yield from _names_in(getattr(node, field))
    elif isinstance(node, list):
        for item in node:
            yield from _names_in(item)


def _check_like_shapes(c: Checker) -> None:
    """`state m like Q`: Q must be a state (an optimizer's `W` is one), and following `like`s
    must end at a state with a shape of its own, not come back to where it started."""
    likes = {s.name: s.decl.shape for s in c.graph.states() if isinstance(s.decl.shape, ast.LikeShape)
             and not s.implicit}
    states = {s.name for s in c.graph.states()}
    circles: set[frozenset] = set()
    for name, shape in likes.items():
        if shape.name not in states:
            c.report(shape, f"state {name!r} is shaped `like {shape.name}`, but {shape.name!r} is "
                     "not a state", expected="`like` the name of a state" +
                     (" (the parameter `W`, usually)" if c.decl.kind == "optimizer" else ""),
                     hint=c.suggest(shape.name, states) or "declare that state, or give this "
                     "one a shape of its own (`[d, d]`, `mlp(...)`, `scalar`)")
            continue
        seen, current = [name], shape.name
        while current in likes and current not in seen:
            seen.append(current)
            current = likes[current].name
        if current == name and frozenset(seen) not in circles:
            circles.add(frozenset(seen))
            path = " -> ".join([*seen, name])
            c.report(shape, f"state shapes refer to each other in a circle: {path}",
                     expected="`like` a state with a shape of its own",
                     hint="give one of these states a shape (`like W`, `[d, d]`, `scalar`)")


def _check_expr(c: Checker, node, defined, callable_states, task_allowed) -> None:
    if isinstance(node, ast.Name):
        if node.id == TASK and not task_allowed:
            c.report(node, MSG_TASK_OUTSIDE, expected="`minimize task by <rule>`",
                     hint="`task` is the loss of the outer training loop, not a value; write "
                     "`minimize task by gd(lr)` to train a level's state on it")
        elif node.id not in defined and node.id != TASK:
            c.report(node, MSG_UNKNOWN.format(name=node.id),
                     expected="a hyper-parameter, state, context, read or built-in name",
                     hint=c.suggest(node.id, defined) or "define it (e.g. `let name = ...`) or "
                     "declare it as a hyper-parameter")
        return
    if isinstance(node, ast.Call):
        _check_call(c, node, defined, callable_states)
        for child in [*node.args, *(k.value for k in node.kwargs)]:
            _check_expr(c, child, defined, callable_states, task_allowed)
        return
    if isinstance(node, ast.Node):
        for field in type(node).model_fields:
            if field != "span":
                _check_expr(c, getattr(node, field), defined, callable_states, task_allowed)
    elif isinstance(node, list):
        for item in node:
            _check_expr(c, item, defined, callable_states, task_allowed)


def _check_call(c: Checker, call: ast.Call, defined, callable_states) -> None:
    builtin = FUNCTIONS.get(call.func)
    if builtin is None:
        if call.func in callable_states:
            if len(call.args) != 1 or call.kwargs:
                c.report(call, MSG_ARITY.format(name=call.func, expected="exactly 1", s="",
                                                got=len(call.args) + len(call.kwargs)),
                         expected="a memory applied to one input: M(k)",
                         hint="a memory maps one input to one output, e.g. `M(k)`")
        elif call.func in defined:
            c.report(call, MSG_NOT_CALLABLE.format(name=call.func), expected="a memory state",
                     hint="only states with a tensor or mlp shape can be applied, e.g. `M(k)`")
        else:
            c.report(call, MSG_UNKNOWN_FUNCTION.format(name=call.func),
                     expected="a built-in function (docs/language.md) or a memory state",
                     hint=c.suggest(call.func, set(FUNCTIONS) | callable_states) or
                     "the built-in functions are listed in nldsl/language/builtins.py")
        return
    given = len(call.args) + len(call.kwargs)
    unknown = [k for k in call.kwargs if k.name not in builtin.params]
    for keyword in unknown:
        c.report(keyword, f"{call.func}() has no argument {keyword.name!r}",
                 expected=f"one of: {', '.join(builtin.params) or '(none)'}",
                 hint=c.suggest(keyword.name, builtin.params) or builtin.doc)
    if builtin.variadic:
        ok = given >= builtin.min_args
        expected = f"at least {builtin.min_args}"
    else:
        ok = builtin.min_args <= given <= len(builtin.params)
        expected = (str(builtin.min_args) if builtin.min_args == len(builtin.params)
                    else f"{builtin.min_args} to {len(builtin.params)}")
    if not ok:
        c.report(call, MSG_ARITY.format(name=call.func, expected=expected,
                                        s="" if expected.split()[-1] == "1" else "s", got=given),
                 expected=f"{call.func}({', '.join(builtin.params)})", hint=builtin.doc)


def rotate_to_first(cycle: list[str], order: list[str]) -> list[str]:
    """The cycle starting at its member that comes first in `order` (networkx starts anywhere,
    and messages must not depend on hash order)."""
    start = min(range(len(cycle)), key=lambda i: order.index(cycle[i]))
    return cycle[start:] + cycle[:start]


def check_definition_cycles(c: Checker) -> None:
    """Contexts and reads that define each other in a circle, e.g. `let a = b`, `let b = a`."""
    nodes: dict[str, ast.Node] = {}
    for level in c.graph.levels.values():
        nodes.update(level.contexts)
        nodes.update(level.reads)
    graph = nx.DiGraph()
    for name, node in nodes.items():
        for used, _ in name_references(node.value):
            if used in nodes:
                graph.add_edge(name, used)
    reported: set[frozenset] = set()
    for cycle in nx.simple_cycles(graph):
        key = frozenset(cycle)
        if key in reported:
            continue
        reported.add(key)
        cycle = rotate_to_first(cycle, list(nodes))
        path = " -> ".join([*cycle, cycle[0]])
        c.report(nodes[cycle[0]], MSG_CYCLE.format(path=path), expected="definitions that bottom "
                 "out in inputs, states or hyper-parameters",
                 hint="break the cycle: one of these must be computed from something else")
