"""Values: hyper-parameter defaults against their declared types and ranges, and constant
learning-rule arguments against the ranges that make sense (a decay in [0, 1], lr >= 0)."""
from __future__ import annotations

import operator

from nldsl import ast
from nldsl.builtins import RULES
from nldsl.check_common import Checker
from nldsl.consteval import hparam_values, try_evaluate
from nldsl.printer import format_expr

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
        "==": operator.eq, "!=": operator.ne}
_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}
_ARTICLE = {"int": "an", "float": "a", "bool": "a", "str": "a"}

#: Rule arguments that must lie in a range when they are constants: (low, high) inclusive.
RULE_ARG_RANGES = {"lr": (0, None), "decay": (0, 1), "beta": (0, 1), "steps": (1, None)}


def _leaves(value):
    return [leaf for item in value for leaf in _leaves(item)] if isinstance(value, tuple) else [value]


def satisfies(value, constraint: ast.Constraint, env: dict) -> bool | None:
    """Whether every element of `value` meets `constraint`; None when it cannot be decided."""
    try:
        if isinstance(constraint, ast.Bound):
            bound = try_evaluate(constraint.value, env)
            return None if bound is None else all(_OPS[constraint.op](v, bound) for v in _leaves(value))
        if isinstance(constraint, ast.Interval):
            low, high = try_evaluate(constraint.low, env), try_evaluate(constraint.high, env)
            if low is None or high is None:
                return None
            return all((low <= v if constraint.low_closed else low < v) and
                       (v <= high if constraint.high_closed else v < high) for v in _leaves(value))
        options = [try_evaluate(o, env) for o in constraint.options]
        return value in options
    except TypeError:
        return False


def describe(constraint: ast.Constraint) -> str:
    if isinstance(constraint, ast.Bound):
        return f"{constraint.op} {format_expr(constraint.value)}"
    if isinstance(constraint, ast.Interval):
        return (f"in {'[' if constraint.low_closed else '('}{format_expr(constraint.low)}, "
                f"{format_expr(constraint.high)}{']' if constraint.high_closed else ')'}")
    return "in {" + ", ".join(format_expr(o) for o in constraint.options) + "}"


def check_hparams(c: Checker) -> None:
    env = hparam_values(c.decl)
    for hparam in c.decl.hparams:
        value = env.get(hparam.name)
        if hparam.default is not None and value is None:
            continue
        if value is not None and hparam.type and not (
                isinstance(value, _TYPES[hparam.type]) and not
                (hparam.type != "bool" and isinstance(value, bool))):
            c.report(hparam.default, f"hyper-parameter {hparam.name!r} is declared {hparam.type} "
                     f"but its default is {value!r}", expected=f"{_ARTICLE[hparam.type]} {hparam.type} value",
                     hint="change the default or the declared type")
        for constraint in hparam.constraints:
            if value is not None and satisfies(value, constraint, env) is False:
                c.report(hparam.default, f"the default of {hparam.name!r} ({value!r}) is outside "
                         f"its declared range ({describe(constraint)})",
                         expected=f"a value {describe(constraint)}", hint="fix the default or the range")


def check_rules(c: Checker) -> None:
    env = hparam_values(c.decl)
    for level in c.graph.levels.values():
        for objective in level.objectives:
            for rule in objective.rules:
                _check_rule(c, rule, env)


def _check_rule(c: Checker, rule: ast.Rule, env: dict) -> None:
    spec = RULES.get(rule.name)
    if spec is None:
        c.report(rule, f"unknown learning rule {rule.name!r}",
                 expected=f"one of: {', '.join(RULES)}", hint=c.suggest(rule.name, RULES) or
                 "learning rules are built in; an optimizer spec such as `adam` is not a rule")
        return
    if len(rule.args) > len(spec.params):
        c.report(rule, f"{rule.name}() takes at most {len(spec.params)} arguments, got "
                 f"{len(rule.args)}", expected=f"{rule.name}({', '.join(spec.params)})",
                 hint=spec.doc)
    bound = dict(zip(spec.params, rule.args))
    for keyword in rule.kwargs:
        if keyword.name not in spec.params:
            c.report(keyword, f"{rule.name}() has no argument {keyword.name!r}",
                     expected=f"one of: {', '.join(spec.params) or '(none)'}",
                     hint=c.suggest(keyword.name, spec.params) or spec.doc)
        elif keyword.name in bound:
            c.report(keyword, f"{rule.name}() got {keyword.name!r} twice",
                     expected="each argument once", hint="remove the positional or the keyword one")
        bound[keyword.name] = keyword.value
    missing = [p for p in spec.params if p not in bound and p not in spec.defaults]
    if missing:
        c.report(rule, f"{rule.name}() is missing {', '.join(map(repr, missing))}",
                 expected=f"{rule.name}({', '.join(spec.params)})", hint=spec.doc)
    for name, expr in bound.items():
        if name not in RULE_ARG_RANGES:
            continue
        value = try_evaluate(expr, env)
        low, high = RULE_ARG_RANGES[name]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (
                (low is not None and value < low) or (high is not None and value > high)):
            what = {"lr": "a negative learning rate", "steps": "a step count below 1"}.get(
                name, f"a {name} outside [0, 1]")
            c.report(expr, f"{what}: {name} = {value!r}",
                     expected=f"{name} >= {low}" if high is None else f"{name} in [{low}, {high}]",
                     hint={"lr": "a negative learning rate ascends the objective; flip the "
                                 "objective's sign instead"}.get(name, "gates and decays are "
                           "fractions: 1 keeps everything, 0 forgets everything"))
