"""The optimizer's evaluator: the shared one (nldsl/runtime/evaluate.py) on one tensor, with the
kernels generated code calls, the arithmetic shapes PyTorch's optimizers fuse, and located errors.

The reference schedule (`interpret.py`) evaluates every expression of a plan with it, one
parameter tensor at a time, in the frame `TENSOR` (no batch dims); names are looked up through a
callable, so the caller decides when a context is computed (interpret.py: before the step's
writes). The arithmetic shapes of the rewrite table (nldsl/lower/rewrites.py: lerp, add with
alpha, addcmul, addcdiv, sqrt of a quotient) are evaluated by the single torch op that computes
them, the same ops PyTorch's optimizers use and optim/printer.py prints from the same table into
generated code, so results agree with both to the last bit where the math agrees.
"""
from __future__ import annotations

import math
import operator
from typing import Any, Callable

import torch

from nldsl.language import ast
from nldsl.errors import NLDSLError, NLDSLValueError, Problem, Source
from nldsl.lower import rewrites
from nldsl.optim import kernels
from nldsl.runtime.evaluate import TENSOR, Evaluator

#: How a rewrite's coefficient combines its numbers (rewrites.Then).
_TIMES_OR_DIVIDE = {"*": operator.mul, "/": operator.truediv}

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

    Within one top-level call each node is evaluated once (memoised by identity), so the
    rewrite table, which looks at subexpressions before deciding, costs nothing extra: linear in the size
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
        match = rewrites.of_sum(e, self._is_tensor)
        fused = self._fused(match) if match is not None else None
        return super()._binary(e) if fused is None else fused

    def _call(self, e):
        match = rewrites.of_sqrt(e, self._is_tensor)
        return super()._call(e) if match is None else self._fused(match)

    def _is_tensor(self, e: ast.Expr) -> bool:
        return is_tensor(self(e))

    def _fused(self, match: rewrites.Fused):
        """The rewrite table's torch op (nldsl/lower/rewrites.py); None where torch's op cannot
        take the operands (add's alpha on two dtypes: the plain ops promote)."""
        args = [self(arg) for arg in match.args]
        if match.op == "sqrt_div":
            return torch.sqrt(args[0]) / math.sqrt(args[1])
        if match.op == "lerp":
            return torch.lerp(*args)
        if match.op == "addcmul":
            return torch.addcmul(*args, value=match.sign)
        then = lambda rest, op, n: _TIMES_OR_DIVIDE[op](1 if rest is None else rest, n)
        scale = rewrites.fold(match.scale, self, operator.mul, then)
        value = scale if match.sign > 0 else -scale
        if match.op == "add":
            return torch.add(*args, alpha=value) if args[0].dtype == args[1].dtype else None
        return torch.addcdiv(*args, value=value)
