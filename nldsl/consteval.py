"""Evaluate expressions that are constant once the hyper-parameters are known.

Used by the validator (ranges, periods, constant gates, symbolic shapes) and by compilers to
resolve hyper-parameters. Pure Python on AST nodes: never `eval`.
"""
from __future__ import annotations

import math
import operator
from typing import Any

from nldsl import ast


class NotConstant(Exception):
    """The expression depends on data, states, or a hyper-parameter with no value."""


_BINARY = {
    "+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
    "**": operator.pow, "<": operator.lt, "<=": operator.le, ">": operator.gt,
    ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}
_UNARY_FUNCS = {"sqrt": math.sqrt, "exp": math.exp, "log": math.log, "abs": abs,
                "sigmoid": lambda a: 1 / (1 + math.exp(-a)), "tanh": math.tanh}


def hparam_values(decl: ast.SpecDecl, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each hyper-parameter's value: the override if given, else its default (if constant)."""
    values: dict[str, Any] = {}
    for hparam in decl.hparams:
        if overrides and hparam.name in overrides:
            values[hparam.name] = overrides[hparam.name]
        elif hparam.default is not None:
            try:
                values[hparam.name] = evaluate(hparam.default, values)
            except (NotConstant, ArithmeticError, TypeError, ValueError, IndexError):
                pass
    return values


def evaluate(expr: ast.Expr, env: dict[str, Any]) -> Any:
    """The value of `expr` given `env` (name -> value); raises NotConstant otherwise."""
    if isinstance(expr, (ast.Number, ast.Bool, ast.String)):
        return expr.value
    if isinstance(expr, ast.Name):
        if expr.id in env:
            return env[expr.id]
        raise NotConstant(expr.id)
    if isinstance(expr, ast.Tuple):
        return tuple(evaluate(item, env) for item in expr.items)
    if isinstance(expr, ast.Unary):
        value = evaluate(expr.operand, env)
        return -value if expr.op == "-" else not value
    if isinstance(expr, ast.Binary):
        if expr.op == "and":
            return evaluate(expr.left, env) and evaluate(expr.right, env)
        if expr.op == "or":
            return evaluate(expr.left, env) or evaluate(expr.right, env)
        if expr.op == "@":
            raise NotConstant("@")
        return _BINARY[expr.op](evaluate(expr.left, env), evaluate(expr.right, env))
    if isinstance(expr, ast.Conditional):
        branch = expr.then if evaluate(expr.cond, env) else expr.otherwise
        return evaluate(branch, env)
    if isinstance(expr, ast.Index):
        return evaluate(expr.value, env)[int(evaluate(expr.index, env))]
    if isinstance(expr, ast.Call) and expr.func in _UNARY_FUNCS and len(expr.args) == 1 and not expr.kwargs:
        return _UNARY_FUNCS[expr.func](evaluate(expr.args[0], env))
    if isinstance(expr, ast.Call) and expr.func in ("max", "min") and len(expr.args) == 2:
        pick = max if expr.func == "max" else min
        return pick(evaluate(expr.args[0], env), evaluate(expr.args[1], env))
    raise NotConstant(type(expr).__name__)


def try_evaluate(expr: ast.Expr | None, env: dict[str, Any]) -> Any | None:
    """`evaluate`, or None when the value is not known statically."""
    if expr is None:
        return None
    try:
        return evaluate(expr, env)
    except (NotConstant, ArithmeticError, TypeError, ValueError, IndexError, KeyError, OverflowError):
        return None


def names_in(expr: ast.Node) -> list[ast.Name]:
    """Every `Name` node under `expr`, in source order (calls contribute their function name
    as a Name only when it is not a built-in; see `called_names`)."""
    found: list[ast.Name] = []
    _walk(expr, lambda node: found.append(node) if isinstance(node, ast.Name) else None)
    return found


def calls_in(expr: ast.Node) -> list[ast.Call]:
    found: list[ast.Call] = []
    _walk(expr, lambda node: found.append(node) if isinstance(node, ast.Call) else None)
    return found


def children(node: ast.Node) -> list[ast.Node]:
    """The AST nodes directly under `node` (list fields flattened, spans skipped)."""
    found: list[ast.Node] = []
    for _, value in node:
        if isinstance(value, ast.Node):
            found.append(value)
        elif isinstance(value, list):
            found += [v for v in value if isinstance(v, ast.Node)]
    return found


def _walk(node: Any, visit) -> None:
    if isinstance(node, ast.Node):
        visit(node)
        for field in type(node).model_fields:
            if field != "span":
                _walk(getattr(node, field), visit)
    elif isinstance(node, (list, tuple)):
        for item in node:
            _walk(item, visit)
