"""The optimizer's evaluator: the shared one (nldsl/runtime/evaluate.py) on one tensor, with the
kernels generated code calls, the arithmetic shapes PyTorch's optimizers fuse, and located errors.

The reference schedule (`interpret.py`) evaluates every expression of a plan with it, one
parameter tensor at a time, in the frame `TENSOR` (no batch dims); names are looked up through a
callable, so the caller decides when a context is computed (interpret.py: before the step's
writes). A few arithmetic shapes are evaluated by the single torch op that computes them, the
same ops PyTorch's optimizers use and optim/printer.py prints into generated code, so results
agree with both to the last bit where the math agrees:

    a + w (b - a)      torch.lerp(a, b, w)            w a number
    a +- s b           torch.add(a, b, alpha=+-s)     s a number
    a +- s b           torch.addcmul(a, s, b, value=+-1)   s a tensor
    a +- s b / c       torch.addcdiv(a, b, c, value=+-s)   s a number (a product of numbers)
    sqrt(a / n)        torch.sqrt(a) / math.sqrt(n)   n a number
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from nldsl import ast
from nldsl.errors import NLDSLError, NLDSLValueError, Problem, Source
from nldsl.optim import kernels
from nldsl.runtime.evaluate import TENSOR, Evaluator

#: What torch and the kernels raise when values do not fit an expression (shapes, dims, an
#: index): a located error. Anything else (TypeError, KeyError) is a bug of the compiler.
FAILURES = (RuntimeError, ValueError, IndexError)


def _per_tensor(kernel: Callable) -> Callable:
    return lambda frame, *args, **kwargs: kernel(*args, **kwargs)


#: The built-ins (and derive.py's lerp, addcmul, divide_or_zero), each computed by the kernel
#: generated code calls (kernels.py): the same ops.
_KERNELS: dict[str, Callable] = {
    name: _per_tensor(getattr(kernels, name)) for name in (
        "l2norm", "outer", "transpose", "dot", "l2", "orthogonality", "norm", "sum", "mean",
        "trace", "softmax", "size", "ndim", "stopgrad", "newton_schulz", "divide_or_zero",
        "clamp", "rmsnorm", "layernorm", "lp", "huber", "concat", "lerp", "addcmul")}
_KERNELS |= {"max": _per_tensor(kernels.maximum), "min": _per_tensor(kernels.minimum)}


def is_tensor(value: Any) -> bool:
    return isinstance(value, torch.Tensor)


class TensorEvaluator(Evaluator):
    """evaluate(expr) on one parameter tensor, names from `lookup(name)`.

    Within one top-level call each node is evaluated once (memoised by identity), so the fused
    shapes that look at a subexpression before deciding cost nothing extra: linear in the size
    of the expression. Names are looked up once per call, so a call sees one state."""

    functions = _KERNELS

    def __init__(self, lookup: Callable[[str], Any], source: Source | None = None, where: str = ""):
        """`source` and `where` (e.g. "for a parameter of shape (3, 4)") locate a failure."""
        super().__init__(TENSOR, lookup, lambda name, x: kernels.apply_memory(lookup(name), x))
        self.source, self.where = source, where
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
            value = super().__call__(expr)
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

    def _binary(self, e):
        fused = self._fused(e) if e.op in ("+", "-") else None
        return super()._binary(e) if fused is None else fused

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
        """The table above, for `a + ...` and `a - ...`; None when e has none of its shapes."""
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
        return None

    def _call(self, e):
        if e.func == "sqrt" and isinstance(e.args[0], ast.Binary) and e.args[0].op == "/":
            top, bottom = self(e.args[0].left), self(e.args[0].right)
            if is_tensor(top) and not is_tensor(bottom):
                return torch.sqrt(top) / math.sqrt(bottom)
        return super()._call(e)
