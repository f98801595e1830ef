"""One small evaluator of spec expressions over torch tensors and Python numbers.

The reference schedule (`interpret.py`) and the autograd fallback (`derive.py`) both evaluate
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
from nldsl.optim import kernels

_BINARY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
           "**": operator.pow, "<": operator.lt, "<=": operator.le, ">": operator.gt,
           ">=": operator.ge, "==": operator.eq, "!=": operator.ne}

_TORCH_UNARY = {"sqrt": torch.sqrt, "exp": torch.exp, "log": torch.log, "abs": torch.abs,
                "sign": torch.sign, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
                "softplus": torch.nn.functional.softplus, "relu": torch.relu,
                "gelu": torch.nn.functional.gelu, "silu": torch.nn.functional.silu}
_MATH_UNARY = {"sqrt": math.sqrt, "exp": math.exp, "log": math.log, "abs": abs,
               "tanh": math.tanh}

_TENSOR_FUNCS: dict[str, Callable] = {
    "l2norm": kernels.l2norm, "outer": kernels.outer, "transpose": kernels.transpose,
    "dot": kernels.dot, "l2": kernels.l2, "orthogonality": kernels.orthogonality,
    "norm": lambda a: a.norm(dim=-1, keepdim=True), "sum": lambda a: a.sum(-1, keepdim=True),
    "mean": lambda a: a.mean(-1, keepdim=True), "trace": lambda a: a.diagonal(0, -2, -1).sum(-1),
    "softmax": lambda a: a.softmax(-1), "size": lambda a, d: a.size(int(d)),
    "ndim": lambda a: a.ndim, "stopgrad": lambda a: a.detach(),
    "newton_schulz": kernels.newton_schulz, "divide_or_zero": kernels.divide_or_zero,
    "addcmul": lambda s, a, b, w: torch.addcmul(s, a, b, value=w),
    "lerp": lambda a, b, w: torch.lerp(a, b, w) if is_tensor(a) else a + w * (b - a),
}


def is_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


def is_scalar_expr(expr: ast.Expr, scalar_names: set[str]) -> bool:
    """True when `expr` is a number on every tensor: built from numbers and scalar names only."""
    if isinstance(expr, (ast.Number, ast.Bool, ast.String)):
        return True
    if isinstance(expr, ast.Name):
        return expr.id in scalar_names
    if isinstance(expr, ast.Unary):
        return is_scalar_expr(expr.operand, scalar_names)
    if isinstance(expr, ast.Binary):
        return (expr.op != "@" and is_scalar_expr(expr.left, scalar_names)
                and is_scalar_expr(expr.right, scalar_names))
    if isinstance(expr, ast.Conditional):
        return all(is_scalar_expr(e, scalar_names) for e in (expr.cond, expr.then, expr.otherwise))
    if isinstance(expr, ast.Index):
        return is_scalar_expr(expr.value, scalar_names)
    if isinstance(expr, ast.Tuple):
        return all(is_scalar_expr(e, scalar_names) for e in expr.items)
    if isinstance(expr, ast.Call):
        return expr.func in _MATH_UNARY or expr.func in ("max", "min") and all(
            is_scalar_expr(a, scalar_names) for a in expr.args)
    return False


class Evaluator:
    """evaluate(expr) with names from `lookup(name)`; `grad(X)` looks up "grad(X)"."""

    def __init__(self, lookup: Callable[[str], Any]):
        self.lookup = lookup

    def __call__(self, expr: ast.Expr) -> Any:
        method = getattr(self, "_" + expr.kind)
        return method(expr)

    def _number(self, e): return e.value
    def _bool(self, e): return e.value
    def _string(self, e): return e.value
    def _name(self, e): return self.lookup(e.id)
    def _tuple(self, e): return tuple(self(item) for item in e.items)
    def _index(self, e): return self(e.value)[int(self(e.index))]

    def _unary(self, e):
        value = self(e.operand)
        return -value if e.op == "-" else not value

    def _conditional(self, e):
        return self(e.then) if self(e.cond) else self(e.otherwise)

    def _binary(self, e):
        if e.op == "and":
            return self(e.left) and self(e.right)
        if e.op == "or":
            return self(e.left) or self(e.right)
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
        args = [self(a) for a in e.args]
        kwargs = {k.name: self(k.value) for k in e.kwargs}
        if e.func == "grad":
            return self.lookup(f"grad({e.args[0].id})")
        if e.func in ("max", "min"):
            a, b = args
            if not is_tensor(a) and not is_tensor(b):
                return max(a, b) if e.func == "max" else min(a, b)
            a, b = (x if is_tensor(x) else torch.tensor(x) for x in (a, b))
            return torch.maximum(a, b) if e.func == "max" else torch.minimum(a, b)
        if e.func == "clamp":
            return torch.clamp(args[0], args[1], args[2])
        if e.func == "sqrt" and isinstance(e.args[0], ast.Binary) and e.args[0].op == "/":
            top, bottom = self(e.args[0].left), self(e.args[0].right)
            if is_tensor(top) and not is_tensor(bottom):
                return torch.sqrt(top) / math.sqrt(bottom)
        if e.func in _TORCH_UNARY:
            value = args[0]
            return _TORCH_UNARY[e.func](value) if is_tensor(value) else _MATH_UNARY[e.func](value)
        if e.func in _TENSOR_FUNCS:
            return _TENSOR_FUNCS[e.func](*args, **kwargs)
        memory = self.lookup(e.func)
        if isinstance(memory, kernels.MLP):
            return memory(*args)
        return memory @ args[0]
