"""One evaluator of spec expressions, for an optimizer's tensors and a module's frames.

An expression describes one unit: one parameter tensor at one step (an optimizer), one token of
one head (a module). `Evaluator` computes it for many units at once in a `Frame` (frame.py: `nb`
batch dims before the value dims): a module's reference schedule in frame [B] (one token), its
chunked schedule in [B, T] (a whole call), an optimizer in `TENSOR`, the empty prefix (one
tensor: no batch dims, no heads, so that broadcasting and `@` are exactly torch's). The caller
decides what a name means (`lookup`: a context, a state, a read, `x`, `t`, `W`, `grad(W)`) and
what a memory applied to an input gives (`apply`).

The node kinds, arithmetic, logic, conditionals, indexing and the elementwise built-ins are
evaluated here, once for both compilers. Every other built-in comes from the subclass's table
`functions` (name -> f(frame, *args, **kwargs)): `FrameEvaluator` below has the module
runtime's (runtime/functions.py: per head, reductions over one unit's elements);
optim/evaluate.py's `TensorEvaluator` has the kernels generated optimizer code calls, so that
the optimizer's reference and fused schedules compute with the same ops. Numbers stay Python
numbers.
"""
from __future__ import annotations

import operator
from typing import Any, Callable

import torch

from nldsl.language import ast
from nldsl.lower.sequence import KINDS
from nldsl.runtime import functions as fn
from nldsl.runtime.attention import ROPE_BASE, rope
from nldsl.runtime.functions import SpecUseError
from nldsl.runtime.frame import Frame

#: One tensor as a frame: the optimizer's unit (no batch dims, no heads).
TENSOR = Frame(0)

_ARITH = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
          "**": operator.pow, "<": operator.lt, "<=": operator.le, ">": operator.gt,
          ">=": operator.ge, "==": operator.eq, "!=": operator.ne}


def _tensor(value) -> bool:
    return isinstance(value, torch.Tensor)


class Evaluator:
    """evaluate(expr) in `frame`: `lookup(name)` gives a value of this frame (`grad(X)` looks up
    "grad(X)"), `apply(name, u)` applies a memory state to an input, `functions` computes the
    built-ins that are not elementwise."""

    functions: dict[str, Callable] = {}

    def __init__(self, frame: Frame, lookup: Callable[[str], Any], apply: Callable[[str, Any], Any]):
        self.frame, self.lookup, self.apply = frame, lookup, apply

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
        """Python's conditional on a number; elementwise (torch.where, both sides computed) on a
        tensor. Numbers stay numbers, so they take the dtype of the tensor they meet."""
        cond = self(e.cond)
        if not _tensor(cond):
            return self(e.then) if cond else self(e.otherwise)
        f = self.frame
        then, otherwise = f.align(self(e.then), self(e.otherwise))
        cond, then = f.align(cond, then)
        cond, otherwise = f.align(cond, otherwise)
        return torch.where(cond, then, otherwise)

    def _binary(self, e):
        left, right = self(e.left), self(e.right)
        if e.op in ("and", "or"):
            if not (_tensor(left) or _tensor(right)):
                return (left and right) if e.op == "and" else (left or right)
            like = left if _tensor(left) else right
            left, right = self.frame.align(torch.as_tensor(left, device=like.device),
                                           torch.as_tensor(right, device=like.device))
            return (torch.logical_and if e.op == "and" else torch.logical_or)(left, right)
        if e.op == "@":
            return self._matmul(left, right)
        left, right = self.frame.align(left, right)
        return _ARITH[e.op](left, right)

    def _matmul(self, left, right):
        """torch.matmul's rules on value dims; a per-head matrix or vector on one side makes the
        other side's vector per head."""
        f = self.frame
        if f.nb == 0:                          # one tensor: torch's own matmul
            return left @ right
        if f.is_split(right) and not f.is_split(left) and f.rank(left) == 1:
            left = f.vector(f.split(left))
        if f.is_split(left) and not f.is_split(right) and f.rank(right) == 1:
            right = f.vector(f.split(right))
        if f.rank(left) >= 2:                  # a per-head scalar against a matrix: width 1
            right = f.vector(right)
        if f.rank(right) >= 2:
            left = f.vector(left)
        return fn.matmul(left, right, f.rank(left), f.rank(right))

    def _call(self, e: ast.Call):
        func = e.func
        if func == "grad":                     # the gradient the caller was given
            return self.lookup(f"grad({e.args[0].id})")
        args = [self(a) for a in e.args]
        kwargs = {k.name: self(k.value) for k in e.kwargs}
        f = self.frame
        if func in fn.ELEMENTWISE:
            on_tensor, on_number = fn.ELEMENTWISE[func]
            return on_tensor(f.split(args[0])) if _tensor(args[0]) else on_number(args[0])
        function = self.functions.get(func)
        if function is not None:
            return function(f, *args, **kwargs)
        return self.apply(func, f.vector(f.split(args[0])))


# -- the module runtime's built-ins: one unit per head, batch dims never reduced ----------------

def _first_tensor(*values) -> torch.Tensor:
    return next(v for v in values if _tensor(v))


def _last_dim(function):
    """A function of the last dim: a per-head scalar is a vector of width 1 there (its other
    arguments, rmsnorm's eps, are numbers)."""
    return lambda f, a, *rest, **options: function(f.vector(f.split(a)), *rest, **options)


def _extremum(pick, on_numbers):
    def extremum(f, a, b):
        if not (_tensor(a) or _tensor(b)):
            return on_numbers(a, b)
        return pick(*f.align(*fn.as_tensors(a, b, _first_tensor(a, b))))
    return extremum


def _clamp(f, a, low, high):
    if not any(_tensor(v) for v in (a, low, high)):
        return min(max(a, low), high)
    if not (_tensor(low) or _tensor(high)):
        return torch.clamp(f.split(a), low, high)
    a, lo = f.align(*fn.as_tensors(a, low, _first_tensor(a, low, high)))
    a, hi = f.align(a, fn.as_tensors(high, high, a)[0])
    return torch.minimum(torch.maximum(a, lo), hi)


def _outer(f, a, b):
    return fn.outer(*f.align(f.vector(f.split(a)), f.vector(f.split(b))))


def _loss(function):
    """dot, l2: over one unit's elements, each operand per head."""
    return lambda f, a, b: function(*f.align(f.split(a), f.split(b)), f.nb)


def _lp(f, a, b, p):
    return fn.lp(*f.align(f.split(a), f.split(b)), p, f.nb)


def _huber(f, a, b, delta):
    return fn.huber(*f.align(f.split(a), f.split(b)), delta, f.nb)


def _concat(f, *parts):
    """Vectors of any widths joined along the last dim; the other dims broadcast together."""
    parts = [f.vector(f.split(a)) for a in parts]
    lead = torch.broadcast_shapes(*[p.shape[:-1] for p in parts])
    return torch.cat([p.expand(*lead, p.shape[-1]) for p in parts], dim=-1)


def _flatten(a, f):
    """[.., n, m] -> [.., n m] over one unit's last two value dims."""
    if f.rank(a) < 2:
        raise ValueError(f"flatten needs a matrix, got a value of rank {f.rank(a)}")
    return a.flatten(-2)


def _wsum(f, weights, *branches):
    """sum_i weights[i] branch_i; tensor weights carry the branch index last."""
    total = 0
    for i, branch in enumerate(branches):
        total = total + (weights[..., i] if _tensor(weights) else weights[i]) * branch
    return total


_MODULE_FUNCTIONS: dict[str, Callable] = {
    **{name: _last_dim(function) for name, function in fn.LAST_DIM.items()},
    "stopgrad": lambda f, a: fn.stopgrad(f.split(a)),
    "max": _extremum(torch.maximum, max), "min": _extremum(torch.minimum, min), "clamp": _clamp,
    "outer": _outer, "dot": _loss(fn.dot), "l2": _loss(fn.l2), "lp": _lp, "huber": _huber,
    "orthogonality": lambda f, a: fn.orthogonality(f.split(a), f.nb),
    "concat": _concat, "wsum": _wsum, "flatten": lambda f, a: _flatten(f.split(a), f),
    "size": lambda f, a, dim: a.shape[f.nb:][int(dim)],
    "ndim": lambda f, a: f.rank(a),
}

#: The built-ins the module runtime computes (lower/unsupported.py lists those the module
#: compiler rejects; init built-ins are not expressions).
COMPUTED = frozenset(fn.ELEMENTWISE) | frozenset(_MODULE_FUNCTIONS) | \
    {"conv", "window", "rope", "period_mean"} | frozenset(KINDS)


class FrameEvaluator(Evaluator):
    """The module schedules' evaluator. `conv(call, a, width)` is the causal convolution at that
    call site, `window(call, width)` the Omega rule's sum over past tokens (the caller owns
    their contexts; lower/windows.py), `attend(call, q, keys, values)` the attention at that
    call site, keys and values lists of streams (the caller owns kernels and caches), and
    `period_mean(call, a)` the running mean over its level's period (the caller owns the sums;
    without one, a period is one unit and the mean is `a`); `rope` takes the token's position
    from `t`."""

    functions = _MODULE_FUNCTIONS

    def __init__(self, frame: Frame, lookup: Callable[[str], Any],
                 apply: Callable[[str, Any], Any], conv: Callable[[ast.Call, Any, int], Any],
                 window: Callable[[ast.Call, int], Any] | None = None,
                 attend: Callable | None = None,
                 period_mean: Callable[[ast.Call, Any], Any] | None = None):
        super().__init__(frame, lookup, apply)
        self.conv, self.window, self.attend = conv, window, attend
        self.period_mean = period_mean or (lambda call, a: a)

    def _call(self, e: ast.Call):
        if e.func == "conv":
            return self.conv(e, self(e.args[0]), int(self(e.args[1])))
        if e.func == "window":
            width = e.args[0] if e.args else next(k.value for k in e.kwargs if k.name == "width")
            return self.window(e, int(self(width)))
        if e.func in KINDS:
            streams = lambda arg: [self(a) for a in arg.items] if isinstance(arg, ast.Tuple) \
                else [self(arg)]
            if self.attend is None:
                raise KeyError(f"`{e.func}` inside a windowed expression (its cache follows "
                               "the whole call)")
            return self.attend(e, self(e.args[0]), streams(e.args[1]), streams(e.args[2]))
        if e.func == "rope":
            return self._rope(e)
        if e.func == "period_mean":
            return self.period_mean(e, self(e.args[0]))
        return super()._call(e)

    def _rope(self, e: ast.Call):
        f = self.frame
        a = f.vector(f.split(self(e.args[0])))
        base = {k.name: k.value for k in e.kwargs}.get("base", e.args[1] if len(e.args) > 1
                                                        else None)
        base = float(self(base)) if base is not None else ROPE_BASE
        if not isinstance(a, torch.Tensor) or a.shape[-1] % 2:
            width = a.shape[-1] if isinstance(a, torch.Tensor) else "a number"
            raise SpecUseError(e, f"rope rotates pairs of channels, but its argument has width "
                               f"{width}", "a vector of even width (per head)", "rope the "
                               "queries and keys, whose head_dim is even")
        t = self.lookup("t")
        position = (t - 1) if isinstance(t, torch.Tensor) else torch.tensor(
            float(t - 1), dtype=torch.float64, device=a.device)
        return rope(a, position, base)
