"""Vocabulary: which spec kinds may use each built-in and where (nldsl/language/builtins.py, one table),
what `grad(...)` may take, and the options an `mlp(...)` state may name."""
from __future__ import annotations

import re

from nldsl.language import ast
from nldsl.build import PARAMETER
from nldsl.language.builtins import (FUNCTIONS, INIT, MLP_ACTIVATIONS, MLP_OPTIONS,
                            MODULE_ONLY_MLP_OPTIONS, OBJECTIVE, ROLE_LIMITS)
from nldsl.validation.common import Checker
from nldsl.validation.names import expressions
from nldsl.language.consteval import calls_in
from nldsl.language.printer import format_expr

_PLACE_WORDS = {OBJECTIVE: "a `minimize` loss", INIT: "a state's initial value",
                "expression": "an expression"}
_WHERE_HINT = {
    "window": "write it as the loss of a level: `minimize {name}(...) by gd(lr)`",
    "init": "use it as an initial value, e.g. `state M : [d, d] = {name}()`; inside an "
            "expression write a constant instead (`0`, `1`)",
    "sequence": "optimizer expressions act on one parameter tensor at one step; sequence mixing "
                "belongs in a module spec",
    "aggregate": "combine the branches with arithmetic, or write the spec as a module",
    "period": "pool over a module level's period: `gate eta = sigmoid(period_mean(x @ W))`",
}
_NOT_COMPILED_HINT = {
    "rmsnorm": "write it out: `a / sqrt(mean(a * a) + 1e-8)`",
    "layernorm": "write it out with `mean` and `sqrt`",
    "huber": "use `l2` or `lp`, or write the update explicitly",
    "concat": "update each part separately",
}


def check_vocabulary(c: Checker) -> None:
    """Every built-in is used by a kind of spec and in a place its table entry allows."""
    kind = c.decl.kind
    for expr, place in expressions(c):
        for call in calls_in(expr):
            builtin = FUNCTIONS.get(call.func)
            if builtin is None:
                continue
            where = f"`{call.func}` {ROLE_LIMITS.get(builtin.role, '')}"
            if kind not in builtin.kinds:
                c.report(call, where, expected=f"a built-in {kind}s may use (docs/language.md, "
                         "built-ins)", hint=_WHERE_HINT[builtin.role].format(name=call.func))
            elif place not in builtin.places:
                c.report(call, f"{where}, not in {_PLACE_WORDS[place]}",
                         expected=f"{call.func}() in {' or '.join(sorted(_PLACE_WORDS[p] for p in builtin.places))}",
                         hint=_WHERE_HINT[builtin.role].format(name=call.func))
            elif kind == "optimizer" and not builtin.optimizer_ok:
                c.report(call, f"`{call.func}` is not compiled for optimizers yet",
                         expected="a built-in the optimizer compiler computes in both schedules",
                         hint=_NOT_COMPILED_HINT.get(call.func, "write a constant initial value "
                                                     "instead, e.g. `state m like W = 0` or `= 1`"))


def check_grad_args(c: Checker) -> None:
    """`grad(X)`: X names a parameter the gradient exists for (an optimizer is given grad(W)
    only; a module's task loss has a gradient for each of its states)."""
    kind = c.decl.kind
    states = {s.name for s in c.graph.states() if not s.implicit}
    defined = c.defined_names()
    for expr, _ in expressions(c):
        for call in calls_in(expr):
            if call.func != "grad" or len(call.args) != 1 or call.kwargs:
                continue  # arity is check_names' business
            arg = call.args[0]
            if kind == "optimizer":
                expected, hint = "grad(W)", ("the gradient an optimizer is given is that of its "
                                             "parameter; write `grad(W)`")
            else:
                expected, hint = "grad(S) for a state S", ("the task loss has a gradient with "
                                                           "respect to each state of the module")
            if not isinstance(arg, ast.Name):
                c.report(arg, f"`grad` takes the name of a parameter, not `{format_expr(arg)}`",
                         expected=expected, hint=hint)
            elif kind == "optimizer" and arg.id != PARAMETER and arg.id in defined:
                what = "its own state" if arg.id in states else "a hyper-parameter" \
                    if arg.id in c.graph.hparams else "a definition"
                c.report(arg, f"an optimizer is given the gradient of `W` only, not of "
                         f"{what} {arg.id!r}", expected=expected, hint=hint)
            elif kind == "module" and arg.id not in states and arg.id in defined:
                c.report(arg, f"{arg.id!r} is not a state: `grad` is the task loss's gradient "
                         "with respect to a state", expected=expected, hint=hint)


_ARROW_END = re.compile(r"->")


def _option_span(c: Checker, shape: ast.MLPShape, option: str, nth: int) -> ast.Span:
    """Where the `nth` occurrence of an option word sits after the shape's last `->`."""
    span = shape.span
    for line in range(span.line, (span.end_line or span.line) + 1):
        text = c.source.line(line)
        start = span.col - 1 if line == span.line else 0
        stop = span.end_col - 1 if line == span.end_line else len(text)
        arrows = [m.end() for m in _ARROW_END.finditer(text, start, stop)]
        start = arrows[-1] if arrows else start
        found = [m for m in re.finditer(rf"\b{re.escape(option)}\b", text[:stop]) if m.start() >= start]
        if len(found) > nth:
            m = found[nth]
            return ast.Span(line=line, col=m.start() + 1, end_line=line, end_col=m.end() + 1)
    return span


def check_mlp_options(c: Checker) -> None:
    """An `mlp(...)` names at most one known activation and known options only."""
    known = [*MLP_ACTIVATIONS, *MLP_OPTIONS]
    expected = f"an activation ({', '.join(MLP_ACTIVATIONS)}) or {', '.join(map(repr, MLP_OPTIONS))}"
    for state in c.graph.states():
        shape = state.decl.shape
        if not isinstance(shape, ast.MLPShape):
            continue
        seen: dict[str, int] = {}
        activations = []
        for option in shape.options:
            nth = seen.get(option, 0)
            seen[option] = nth + 1
            span = _option_span(c, shape, option, nth)
            if option not in known:
                c.report(span, f"unknown mlp option {option!r}", expected=expected,
                         hint=c.suggest(option, known) or "an mlp has no biases or norms: "
                         "apply them to its input or output")
            elif nth:
                c.report(span, f"mlp option {option!r} is given twice", expected="each option "
                         "once", hint="remove the repeated option")
            elif option in MODULE_ONLY_MLP_OPTIONS and c.decl.kind != "module":
                c.report(span, f"mlp option {option!r} is compiled for module specs only",
                         expected=f"{', '.join(map(repr, sorted(set(MLP_OPTIONS) - MODULE_ONLY_MLP_OPTIONS)))} "
                         "or an activation", hint="normalise the memory's output explicitly")
            elif option in MLP_ACTIVATIONS:
                activations.append(option)
                if len(activations) == 2:
                    c.report(span, f"an mlp has one activation, but this one names "
                             f"{activations[0]!r} and {option!r}", expected="one of: " +
                             ", ".join(MLP_ACTIVATIONS), hint="keep one activation")


def check_period_calls(c: Checker) -> None:
    """`period_mean(a)` sits in a context of a token level (the period it averages over is its
    level's); `rmsnorm`'s eps is a number or "machine"."""
    contexts = {id(context.value): level for level in c.graph.levels.values()
                if not level.implicit for context in level.contexts.values()}
    for expr, _ in expressions(c):
        level = contexts.get(id(expr))
        for call in calls_in(expr):
            if call.func == "period_mean" and (level is None or level.unit != "token"):
                c.report(call, "`period_mean` averages over a token level's period: it can only "
                         "be a context (key, value, query, gate, let) of a token level",
                         expected="period_mean(...) in a context of a `level ... every N tokens`",
                         hint="define a gate in the level: `gate eta = sigmoid(period_mean(x @ W))`")
            if call.func == "rmsnorm":
                eps = (call.args[1:] + [k.value for k in call.kwargs if k.name == "eps"])[:1]
                if eps and isinstance(eps[0], ast.String) and eps[0].value != "machine":
                    c.report(eps[0], f"rmsnorm eps {eps[0].value!r} is not a number or "
                             "\"machine\"", expected="a number, or \"machine\" (the dtype's "
                             "machine epsilon)", hint="write eps = 1e-6, or eps = \"machine\"")
