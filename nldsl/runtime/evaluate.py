"""Evaluate a spec expression for many units at once, in a `Frame` (batch, time, heads).

The caller decides what a name means (`lookup`: a context, a state, a read, `x`, `t`) and what
a sequence built-in does (`conv`: the caller owns kernels and caches). Numbers stay Python
numbers; tensors follow frame.py's layout. Nothing here knows which schedule is running: the
reference interpreter evaluates one token (frame prefix [B]), the chunked schedule a whole
sequence (prefix [B, T]), with the same code and so the same operations.
"""
from __future__ import annotations

import operator
from typing import Any, Callable

import torch

from nldsl import ast
from nldsl.runtime import functions as fn
from nldsl.runtime.frame import Frame

_ARITH = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
          "**": operator.pow, "<": operator.lt, "<=": operator.le, ">": operator.gt,
          ">=": operator.ge, "==": operator.eq, "!=": operator.ne}


#: The built-ins `FrameEvaluator._call` computes besides fn.ELEMENTWISE and fn.LAST_DIM
#: (lower/unsupported.py lists those the module compiler rejects; init built-ins are not
#: expressions).
SPECIAL = ("conv", "stopgrad", "max", "min", "clamp", "dot", "l2", "outer", "lp", "huber",
           "orthogonality", "concat", "size", "ndim", "wsum")


def _tensor(value) -> bool:
    return isinstance(value, torch.Tensor)


class FrameEvaluator:
    """evaluate(expr) in `frame`. `lookup(name)` gives a value of this frame; `apply(name, u)`
    applies a memory state to an input; `conv(call, a, width)` is the causal convolution at
    that call site."""

    def __init__(self, frame: Frame, lookup: Callable[[str], Any],
                 apply: Callable[[str, Any], Any], conv: Callable[[ast.Call, Any, int], Any]):
        self.frame, self.lookup, self.apply, self.conv = frame, lookup, apply, conv

    def __call__(self, expr: ast.Expr) -> Any:
        return getattr(self, "_" + expr.kind)(expr)

    def _number(self, e): return e.value
    def _bool(self, e): return e.value
    def _string(self, e): return e.value
    def _name(self, e): return self.lookup(e.id)
    def _tuple(self, e): return tuple(self(item) for item in e.items)
    def _index(self, e):
        value, index = self(e.value), int(self(e.index))
        if _tensor(value):                     # the first value dim (per head), never a batch dim
            return self.frame.vector(self.frame.split(value)).select(self.frame.nb, index)
        return value[index]

    def _unary(self, e):
        value = self(e.operand)
        if e.op == "-":
            return -value
        return torch.logical_not(value) if _tensor(value) else not value

    def _conditional(self, e):
        cond = self(e.cond)
        if not _tensor(cond):
            return self(e.then) if cond else self(e.otherwise)
        then, otherwise = self.frame.align(*self._tensors(self(e.then), self(e.otherwise), cond))
        cond, then = self.frame.align(cond, then)
        cond, otherwise = self.frame.align(cond, otherwise)
        return torch.where(cond, then, otherwise)

    def _tensors(self, a, b, like):
        """Numbers as tensors of `like`'s dtype and device, so torch.where can take them."""
        as_tensor = lambda v: v if _tensor(v) else torch.tensor(v, dtype=torch.get_default_dtype()
                                                                 if isinstance(v, float) else None,
                                                                 device=like.device)
        return as_tensor(a), as_tensor(b)

    def _binary(self, e):
        left, right = self(e.left), self(e.right)
        if e.op in ("and", "or"):
            if _tensor(left) or _tensor(right):
                left, right = self.frame.align(*self._tensors(left, right, _first_tensor(left, right)))
                return (torch.logical_and if e.op == "and" else torch.logical_or)(left, right)
            return (left and right) if e.op == "and" else (left or right)
        if e.op == "@":
            left, right = self._matmul_operands(left, right)
            return fn.matmul(left, right, self.frame.rank(left), self.frame.rank(right))
        left, right = self.frame.align(left, right)
        return _ARITH[e.op](left, right)

    def _matmul_operands(self, left, right):
        """A per-head matrix or vector on one side makes the other side's vector per head."""
        f = self.frame
        if f.is_split(right) and not f.is_split(left) and f.rank(left) == 1:
            left = f.vector(f.split(left))
        if f.is_split(left) and not f.is_split(right) and f.rank(right) == 1:
            right = f.vector(f.split(right))
        if f.rank(left) >= 2:                  # a per-head scalar against a matrix: width 1
            right = f.vector(right)
        if f.rank(right) >= 2:
            left = f.vector(left)
        return left, right

    def _call(self, e: ast.Call):
        func = e.func
        if func == "conv":
            return self.conv(e, self(e.args[0]), int(self(e.args[1])))
        args = [self(a) for a in e.args]
        f = self.frame
        if func in fn.ELEMENTWISE:
            torch_fn, math_fn = fn.ELEMENTWISE[func]
            return torch_fn(f.split(args[0])) if _tensor(args[0]) else math_fn(args[0])
        if func == "stopgrad":
            return fn.stopgrad(f.split(args[0]))
        if func in fn.LAST_DIM:
            return fn.LAST_DIM[func](f.vector(f.split(args[0])))
        if func in ("max", "min", "clamp"):
            return self._extremum(func, args)
        if func == "outer":
            a, b = f.align(f.vector(f.split(args[0])), f.vector(f.split(args[1])))
            return fn.outer(a, b)
        if func in ("dot", "l2"):
            a, b = f.align(f.split(args[0]), f.split(args[1]))
            return getattr(fn, func)(a, b, f.nb)
        if func == "orthogonality":
            return fn.orthogonality(f.split(args[0]), f.nb)
        if func in ("lp", "huber"):
            a, b = f.align(f.split(args[0]), f.split(args[1]))
            return getattr(fn, func)(a, b, args[2], f.nb)
        if func == "concat":
            parts = torch.broadcast_tensors(*[f.vector(f.split(a)) for a in args])
            return torch.cat(parts, dim=-1)
        if func == "size":
            return args[0].shape[f.nb:][int(args[1])]
        if func == "ndim":
            return f.rank(args[0])
        if func == "wsum":
            weights, branches = args[0], args[1:]
            total = 0
            for i, branch in enumerate(branches):
                total = total + weights[..., i] * branch if _tensor(weights) else total + weights[i] * branch
            return total
        return self.apply(func, f.vector(f.split(args[0])))

    def _extremum(self, func, args):
        if not any(_tensor(a) for a in args):
            if func == "clamp":
                return min(max(args[0], args[1]), args[2])
            return max(args) if func == "max" else min(args)
        f = self.frame
        if func == "clamp":
            low = args[1] if not _tensor(args[1]) else None
            high = args[2] if not _tensor(args[2]) else None
            if low is not None and high is not None:
                return torch.clamp(f.split(args[0]), low, high)
            a, lo = f.align(*self._tensors(args[0], args[1], _first_tensor(*args)))
            a, hi = f.align(a, self._tensors(args[2], args[2], a)[0])
            return torch.minimum(torch.maximum(a, lo), hi)
        a, b = f.align(*self._tensors(args[0], args[1], _first_tensor(*args)))
        return torch.maximum(a, b) if func == "max" else torch.minimum(a, b)


def _first_tensor(*values) -> torch.Tensor:
    return next(v for v in values if _tensor(v))
