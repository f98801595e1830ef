"""One small evaluator of spec expressions over torch tensors and Python numbers.

The reference schedule (`interpret.py`) and the autograd fallback (`lower/derive.py`) both evaluate
expressions with it, one tensor at a time. Names are looked up through a callable, so the caller
decides when a context is computed (interpret.py: before the step's writes). A few arithmetic shapes are evaluated by the single torch op that
computes them (`a + w (b - a)` by `torch.lerp`, `a - s b` by `torch.add(..., alpha=-s)`), the same
ops PyTorch's optimizers use, so results agree with them to the last bit where the math agrees.
"""
from __future__ import annotations

import math
import operator
from typing import Any, Callable

import torch

from nldsl import ast
from nldsl.builtins import shaped
from nldsl.errors import NLDSLError, NLDSLValueError, Problem, Source
from nldsl.optim import kernels

#: What torch and the kernels raise when values do not fit an expression (shapes, dims, an
#: index): a located error. Anything else (TypeError, KeyError) is a bug of the compiler.
FAILURES = (RuntimeError, ValueError, IndexError)

_BINARY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
           "**": operator.pow, "<": operator.lt, "<=": operator.le, ">": operator.gt,
           ">=": operator.ge, "==": operator.eq, "!=": operator.ne}

_UNARY = frozenset(shaped("elementwise"))

#: The built-ins, each computed by the kernel generated code calls (kernels.py): the same ops.
_TENSOR_FUNCS: dict[str, Callable] = {
    name: getattr(kernels, name) for name in (
        "l2norm", "outer", "transpose", "dot", "l2", "orthogonality", "norm", "sum", "mean",
        "trace", "softmax", "size", "ndim", "stopgrad", "newton_schulz", "divide_or_zero",
        "clamp", "rmsnorm", "layernorm", "lp", "huber", "concat", "lerp", "addcmul")}
_TENSOR_FUNCS |= {"max": kernels.maximum, "min": kernels.minimum}


def is_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


def is_scalar_expr(expr: ast.Expr, scalar_names: set[str]) -> bool:
    """True when `expr` is a number on every tensor: built from numbers and scalar names only."""
    if isinstance(expr, (ast.Number, ast.Bool, ast.String)):
        return True
    if isinstance(expr, ast.Name):
        return expr.id in scalar_names
    parts = {ast.Unary: lambda: [expr.operand], ast.Binary: lambda: [expr.left, expr.right],
             ast.Conditional: lambda: [expr.cond, expr.then, expr.otherwise],
             ast.Index: lambda: [expr.value], ast.Tuple: lambda: expr.items,
             ast.Call: lambda: expr.args}.get(type(expr))
    if parts is None or getattr(expr, "op", None) == "@" or (
            isinstance(expr, ast.Call) and expr.func not in _UNARY | {"max", "min"}):
        return False
    return all(is_scalar_expr(e, scalar_names) for e in parts())


class Evaluator:
    """evaluate(expr) with names from `lookup(name)`; `grad(X)` looks up "grad(X)".

    Within one top-level call each node is evaluated once (memoised by identity), so the fused
    shapes that look at a subexpression before deciding cost nothing extra: linear in the size
    of the expression. Names are looked up once per call, so a call sees one state."""

    def __init__(self, lookup: Callable[[str], Any], source: Source | None = None, where: str = ""):
        """`source` and `where` (e.g. "for a parameter of shape (3, 4)") locate a failure."""
        self.lookup, self.source, self.where = lookup, source, where
        self._memo: dict | None = None

    def __call__(self, expr: ast.Expr) -> Any:
        if self._memo is None:
            self._memo = {}
            try:
                return self(expr)
            finally:
                self._memo = None
        hit = self._memo.get(id(expr))
        if hit is not None and hit[0] is expr:
            return hit[1]
        try:
            value = getattr(self, "_" + expr.kind)(expr)
        except FAILURES as error:
            if isinstance(error, NLDSLError) or not expr.span.line:
                raise
            raise self.failure(expr, error) from error
        self._memo[id(expr)] = (expr, value)
        return value

    def failure(self, expr: ast.Expr, error: Exception) -> NLDSLValueError:
        """The innermost spec expression torch (or a kernel) could not compute: a located error
        (a value of this parameter's shape the spec's expression cannot take)."""
        span = expr.span
        return NLDSLValueError([Problem(
            f"cannot compute this {self.where}: {str(error).splitlines()[0]}", span.line,
            span.col, span.end_line or None, span.end_col or None,
            "operands whose shapes fit (matrices for @, a matrix for newton_schulz, ...)",
            "check the shapes this expression combines for such parameters", self.source)])

    def _number(self, e): return e.value
    def _bool(self, e): return e.value
    def _string(self, e): return e.value
    def _name(self, e): return self.lookup(e.id)
    def _tuple(self, e): return tuple(self(item) for item in e.items)
    def _index(self, e): return self(e.value)[int(self(e.index))]

    def _unary(self, e):
        value = self(e.operand)
        return -value if e.op == "-" else kernels.logical_not(value)

    def _conditional(self, e):
        cond = self(e.cond)
        if is_tensor(cond):                      # elementwise, as torch.where
            return kernels.where(cond, self(e.then), self(e.otherwise))
        return self(e.then) if cond else self(e.otherwise)

    def _binary(self, e):
        if e.op in ("and", "or"):
            left, right = self(e.left), self(e.right)
            if is_tensor(left) or is_tensor(right):
                return kernels.logical(e.op, left, right)
            return (left and right) if e.op == "and" else (left or right)
        fused = self._fused(e)
        if fused is not None:
            return fused
        left, right = self(e.left), self(e.right)
        if e.op == "@":
            return left @ right
        return _BINARY[e.op](left, right)

    def _coefficient(self, e: ast.Expr):
        """(s, t) with e == s * t for a number s, or None: `s * t`, `t * s`, `t / s`, nested."""
        if isinstance(e, ast.Binary) and e.op in "*/":
            left, right = self(e.left), self(e.right)
            if e.op == "*" and not is_tensor(left) and is_tensor(right):
                inner = self._coefficient(e.right)
                return (left * inner[0], inner[1]) if inner else (left, right)
            if not is_tensor(right) and is_tensor(left):
                inner = self._coefficient(e.left) or (1, left)
                return (inner[0] * right if e.op == "*" else inner[0] / right, inner[1])
        return None

    def _fused(self, e: ast.Binary):
        """`a + w * (b - a)` -> lerp;  `a +- s * b` -> add with alpha (s a number) or addcmul
        (s a tensor);  `a +- s * b / c` -> addcdiv."""
        if e.op not in "+-":
            return None
        right = e.right
        if isinstance(right, ast.Binary) and right.op == "/":
            scaled = self._coefficient(right.left)
            if scaled is not None:
                a, denominator = self(e.left), self(right.right)
                if is_tensor(a) and is_tensor(denominator):
                    value = scaled[0] if e.op == "+" else -scaled[0]
                    return torch.addcdiv(a, scaled[1], denominator, value=value)
        if not (isinstance(right, ast.Binary) and right.op == "*"):
            return None
        if (e.op == "+" and isinstance(right.right, ast.Binary) and right.right.op == "-"
                and right.right.right == e.left):
            a, w, b = self(e.left), self(right.left), self(right.right.left)
            if is_tensor(a) and is_tensor(b) and not is_tensor(w):
                return torch.lerp(a, b, w)
            return None
        a, s, b = self(e.left), self(right.left), self(right.right)
        if is_tensor(a) and is_tensor(b) and not is_tensor(s) and a.dtype == b.dtype:
            return torch.add(a, b, alpha=s if e.op == "+" else -s)
        if is_tensor(a) and is_tensor(b) and is_tensor(s):
            return torch.addcmul(a, s, b, value=1 if e.op == "+" else -1)
        if is_tensor(a) and is_tensor(b):
            return a + s * b if e.op == "+" else a - s * b
        return _BINARY[e.op](a, s * b)

    def _call(self, e):
        if e.func == "grad":
            return self.lookup(f"grad({e.args[0].id})")
        if e.func == "sqrt" and isinstance(e.args[0], ast.Binary) and e.args[0].op == "/":
            top, bottom = self(e.args[0].left), self(e.args[0].right)
            if is_tensor(top) and not is_tensor(bottom):
                return torch.sqrt(top) / math.sqrt(bottom)
        args = [self(a) for a in e.args]
        kwargs = {k.name: self(k.value) for k in e.kwargs}
        if e.func in _UNARY:
            return kernels.unary(e.func, args[0])
        if e.func in _TENSOR_FUNCS:
            return _TENSOR_FUNCS[e.func](*args, **kwargs)
        return kernels.apply_memory(self.lookup(e.func), args[0])
