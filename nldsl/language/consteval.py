"""Evaluate expressions that are constant once the hyper-parameters are known.

Used by the validator (ranges, periods, constant gates, symbolic shapes) and by compilers to
resolve hyper-parameters. Pure Python on AST nodes: never `eval`.
"""
from __future__ import annotations

import math
import operator
import sys
from typing import Any, Callable

from nldsl.language import ast
from nldsl.language.printer import format_expr


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
    """The value of `expr` given `env` (name -> value); raises NotConstant otherwise, and
    BadConstant for a value no tensor can hold (`10**1000`, a string used as a number)."""
    return _value(expr, lambda child: evaluate(child, env), env)


def _value(expr: ast.Expr, value_of: Callable[[ast.Expr], Any], env: dict[str, Any]) -> Any:
    """The value of one node, given `value_of` for its children (so a scan can memoise them)."""
    if isinstance(expr, (ast.Number, ast.Bool, ast.String)):
        return expr.value
    if isinstance(expr, ast.Name):
        if expr.id in env:
            return env[expr.id]
        raise NotConstant(expr.id)
    if isinstance(expr, ast.Tuple):
        return tuple(value_of(item) for item in expr.items)
    if isinstance(expr, ast.Unary):
        value = value_of(expr.operand)
        return -_number(expr, expr.operand, value) if expr.op == "-" else not value
    if isinstance(expr, ast.Binary):
        return _binary(expr, value_of)
    if isinstance(expr, ast.Conditional):
        return value_of(expr.then if value_of(expr.cond) else expr.otherwise)
    if isinstance(expr, ast.Index):
        return value_of(expr.value)[int(value_of(expr.index))]
    if isinstance(expr, ast.Call) and expr.func in _UNARY_FUNCS and len(expr.args) == 1 and not expr.kwargs:
        arg = _number(expr, expr.args[0], value_of(expr.args[0]))
        return _checked(expr, lambda: _UNARY_FUNCS[expr.func](arg))
    if isinstance(expr, ast.Call) and expr.func in ("max", "min") and len(expr.args) == 2:
        pick = max if expr.func == "max" else min
        return pick(*(_number(expr, a, value_of(a)) for a in expr.args))
    raise NotConstant(type(expr).__name__)


def _binary(expr: ast.Binary, value_of) -> Any:
    if expr.op == "and":
        return value_of(expr.left) and value_of(expr.right)
    if expr.op == "or":
        return value_of(expr.left) or value_of(expr.right)
    if expr.op == "@":
        raise NotConstant("@")
    left, right = value_of(expr.left), value_of(expr.right)
    if expr.op in ("==", "!="):
        return _BINARY[expr.op](left, right)
    left, right = _number(expr, expr.left, left), _number(expr, expr.right, right)
    if expr.op == "**" and _huge_power(left, right):
        raise _too_large(expr)
    return _checked(expr, lambda: _BINARY[expr.op](left, right), left, right)


class BadConstant(ValueError):
    """A constant with no value a tensor can hold: the validator reports it at `node` (and
    `try_evaluate` treats it as unknown, like any other failed evaluation)."""

    def __init__(self, node: ast.Node, message: str, expected: str, hint: str):
        super().__init__(message)
        self.node, self.message, self.expected, self.hint = node, message, expected, hint


_FLOAT_MAX = sys.float_info.max
_MAX_BITS = sys.float_info.max_exp + 1     # an int wider than this is no float


def _number(expr: ast.Expr, operand: ast.Expr, value: Any) -> Any:
    """`value` if it is a number; a string or a tuple in arithmetic is a mistake in the spec
    (Python would repeat or concatenate it, a tensor cannot hold it)."""
    if isinstance(value, (str, tuple)):
        what = "a string" if isinstance(value, str) else "a tuple"
        named = f" ({operand.id} = {shown_value(value)})" if isinstance(operand, ast.Name) else ""
        raise BadConstant(expr, f"{what} is used as a number in `{_short(expr)}`{named}",
                          expected="a number", hint="a string can only be compared (`form == \"sum\"`); "
                          "a tuple only indexed (`betas[0]`)")
    return value


def _huge_power(base, exponent) -> bool:
    """Whether an int power would be wider than any float, decided before Python spends
    minutes (or all memory) computing `10 ** 10 ** 10` exactly."""
    return (isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and
            abs(base) > 1 and (abs(base).bit_length() - 1) * exponent > _MAX_BITS)


def _checked(expr: ast.Expr, compute: Callable[[], Any], *operands) -> Any:
    """`compute()`, with a result too large for a float reported at `expr`."""
    try:
        result = compute()
    except OverflowError:
        raise _too_large(expr) from None
    too_large = (isinstance(result, int) and not isinstance(result, bool) and abs(result) > _FLOAT_MAX) \
        or (isinstance(result, float) and math.isinf(result) and
            all(not (isinstance(o, float) and math.isinf(o)) for o in operands))
    if too_large:
        raise _too_large(expr)
    return result


def _too_large(expr: ast.Expr) -> BadConstant:
    return BadConstant(expr, f"`{_short(expr)}` is too large for a float",
                       expected=f"a value of at most {_FLOAT_MAX:.4g} in size",
                       hint="a tensor of floats cannot hold it; use a smaller constant")


def _short(expr: ast.Expr) -> str:
    text = format_expr(expr)
    return text if len(text) <= 40 else text[:37] + "..."


def shown_value(value: Any) -> str:
    """A value as the spec would write it; never a caller's own `__repr__`."""
    if isinstance(value, str):
        return str.__repr__(value)
    if isinstance(value, (tuple, list)):
        inner = ", ".join(shown_value(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    if type(value) is int and value.bit_length() > 200:    # Python refuses to print 4300 digits
        return f"an int of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    return repr(value) if type(value) in (bool, int, float) else f"<{type(value).__name__}>"


def constant_problems(root: ast.Node, env: dict[str, Any]) -> list[BadConstant]:
    """Every BadConstant under `root`, each at the innermost node that causes it. One pass:
    each node is evaluated once from its children's memoised values, and the children of a node
    that is not constant are scanned on their own (a conditional's untaken branch is not)."""
    memo: dict[int, tuple[bool, Any]] = {}
    found: list[BadConstant] = []

    def value_of(node: ast.Node) -> Any:
        if id(node) not in memo:
            try:
                _finite_literal(node)
                memo[id(node)] = (True, _value(node, value_of, env))
            except _FAILURES as error:
                memo[id(node)] = (False, error)
                if isinstance(error, BadConstant) and error.node is node:
                    found.append(error)
                for child in _needed(node, memo):
                    scan(child)
                if not isinstance(error, BadConstant):
                    found.extend(_misused_operands(node, memo))
        ok, value = memo[id(node)]
        if ok:
            return value
        raise value

    def scan(node: ast.Node) -> None:
        try:
            value_of(node)
        except _FAILURES:
            pass

    scan(root)
    return found


def _finite_literal(node: ast.Node) -> None:
    """A literal such as `1e400` reads as inf: in the spec text it is a mistake, never meant as
    inf (the grammar has no inf; compilers may build an inf Number themselves, so `evaluate`
    accepts one)."""
    if isinstance(node, ast.Number) and isinstance(node.value, float) and math.isinf(node.value):
        raise BadConstant(node, "a number too large for a float: it would silently be inf",
                          expected=f"a value of at most {_FLOAT_MAX:.4g} in size",
                          hint="write a smaller constant")


def _misused_operands(node: ast.Node, memo: dict) -> list[BadConstant]:
    """A string or tuple constant in arithmetic with a tensor (`grad(W) * s`): the operation
    is not constant, but a tensor cannot be multiplied by a string either."""
    numeric = isinstance(node, ast.Binary) and node.op not in ("and", "or", "==", "!=")
    if not (numeric or isinstance(node, ast.Unary) and node.op == "-"):
        return []
    operands = [node.left, node.right] if numeric else [node.operand]
    for operand in operands:
        ok, value = memo.get(id(operand), (False, None))
        if ok and isinstance(value, (str, tuple)):
            try:
                _number(node, operand, value)
            except BadConstant as bad:
                return [bad]
    return []


_FAILURES = (NotConstant, ArithmeticError, TypeError, ValueError, IndexError, KeyError)


def _needed(node: ast.Node, memo: dict) -> list[ast.Node]:
    """The children of a node that failed which still run: all of them, except a conditional
    decided by a constant condition, whose untaken branch never runs."""
    if isinstance(node, ast.Conditional) and memo.get(id(node.cond), (False,))[0]:
        return [node.cond, node.then if memo[id(node.cond)][1] else node.otherwise]
    return children(node)


def try_evaluate(expr: ast.Expr | None, env: dict[str, Any]) -> Any | None:
    """`evaluate`, or None when the value is not known statically."""
    if expr is None:
        return None
    try:
        return evaluate(expr, env)
    except _FAILURES:
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
