"""The fused-op rewrites: arithmetic shapes computed by the single torch op PyTorch's optimizers
use for them. One table, read by the optimizer's code printer (optim/printer.py: the `fused`
schedule's source) and by its evaluator (optim/evaluate.py: the `reference` schedule), so the
two schedules compute with the same ops and agree to the last bit where the math agrees:

    shape              op                                   when
    a + w (b - a)      lerp(a, b, w)                        a, b tensors, w a number
    a +- s b           add(a, b, alpha=+-s)                 a, b tensors, s a number
    a +- s b           addcmul(a, s, b, value=+-1)          a, s, b tensors
    a +- c t / d       addcdiv(a, t, d, value=+-c)          a, t, d tensors, c a product of numbers
    sqrt(a / n)        sqrt(a) / sqrt(n)                    a a tensor, n a number

Which subexpressions are tensors only the reader knows (the printer from the names it was
given, the evaluator from the values), so `of_sum(e, tensor)` and `of_sqrt(e, tensor)` ask it:
`tensor(sub)` is True, False, or None where the printer cannot tell (a conditional that picks a
tensor or a number).
None counts as "not a tensor" except where a rewrite needs a number for certain (add's s,
sqrt's n) or a tensor for certain (addcmul's s). The reader computes `sub` to answer (prints or
evaluates it, memoised), so the table asks in one fixed order, left to right; the printer's
hoisted temporaries are numbered in that order.

Torch-free: the result names the op and its operands as expressions; each reader computes them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

from nldsl.language import ast

#: The reader's answer for one subexpression: a tensor (True), a number (False), or unknown (None).
IsTensor = Callable[[ast.Expr], Union[bool, None]]


@dataclass(frozen=True)
class Times:
    """`number * inner`: a number on the left of the rest of the coefficient."""
    number: ast.Expr
    inner: Coefficient


@dataclass(frozen=True)
class Then:
    """`inner op number` (op `*` or `/`); `inner` None is the coefficient 1 (`t / n`)."""
    inner: Coefficient | None
    op: str
    number: ast.Expr


#: The numbers that scale a tensor, kept in the order the spec combines them (so every reader
#: rounds them alike): one number expression, or a Times / Then of them.
Coefficient = Union[ast.Expr, Times, Then]


@dataclass(frozen=True)
class Fused:
    """One rewrite: torch's `op` on `args` (expressions, in the op's argument order); `sign`
    (+1 or -1) times `scale` is add's alpha (scale: s) or addcdiv's value (scale: c); addcmul's
    value is `sign`."""
    op: str                                  # lerp, add, addcmul, addcdiv, sqrt_div
    args: tuple[ast.Expr, ...]
    sign: int = 1
    scale: Coefficient | None = None


def _is(e: ast.Expr, *ops: str) -> bool:
    return isinstance(e, ast.Binary) and e.op in ops


def of_sqrt(e: ast.Call, tensor: IsTensor) -> Fused | None:
    """`sqrt(a / n)`'s rewrite, or None (any call may be passed: only `sqrt` has one)."""
    if e.func == "sqrt" and _is(e.args[0], "/"):
        top, bottom = e.args[0].left, e.args[0].right
        top_tensor, bottom_tensor = tensor(top), tensor(bottom)
        if top_tensor and bottom_tensor is False:
            return Fused("sqrt_div", (top, bottom))
    return None


def of_sum(e: ast.Binary, tensor: IsTensor) -> Fused | None:
    """The rewrite of `a + ...` or `a - ...` (addcdiv, lerp, add, addcmul, tried in that
    order), or None (any binary may be passed). Readers call it from their own `_binary` with no
    frame between: a chain `g + g + ...` nests one level per term, and the parser lets a spec
    nest as deep as `parser.FRAMES_PER_LEVEL` frames a level allow."""
    if e.op not in ("+", "-"):
        return None
    sign = 1 if e.op == "+" else -1
    a, right = tensor(e.left), e.right
    if _is(right, "/"):
        scaled = scale(right.left, tensor)
        d = tensor(right.right)
        if scaled and a and d:
            return Fused("addcdiv", (e.left, scaled[1], right.right), sign, scaled[0])
    if not _is(right, "*"):
        return None
    inner = right.right
    if e.op == "+" and _is(inner, "-") and inner.right == e.left:
        w, b = tensor(right.left), tensor(inner.left)
        return Fused("lerp", (e.left, inner.left, right.left)) if a and b and not w else None
    s, b = tensor(right.left), tensor(right.right)
    if a and b and s is False:
        return Fused("add", (e.left, right.right), sign, right.left)
    if a and b and s is True:
        return Fused("addcmul", (e.left, right.left, right.right), sign)
    return None


def scale(e: ast.Expr, tensor: IsTensor) -> tuple[Coefficient, ast.Expr] | None:
    """(c, t) with e == c * t, c made of numbers and t a tensor, or None: `n * t`, `t * n`,
    `t / n`, nested (`n1 * t / n2` is (n1) / n2 times t)."""
    if not _is(e, "*", "/"):
        return None
    left, right = tensor(e.left), tensor(e.right)
    if e.op == "*" and not left and right:
        inner = scale(e.right, tensor)
        return (Times(e.left, inner[0]), inner[1]) if inner else (e.left, e.right)
    if left and not right:
        inner = scale(e.left, tensor)
        coefficient, t = inner if inner else (None, e.left)
        return Then(coefficient, e.op, e.right), t
    return None


def fold(c: Coefficient, number: Callable[[ast.Expr], object],
         times: Callable[[object, object], object],
         then: Callable[[object | None, str, object], object]) -> object:
    """A coefficient computed by a reader: `number` for each number expression, `times(n, rest)`
    for a Times, `then(rest or None, op, n)` for a Then."""
    if isinstance(c, Times):
        return times(number(c.number), fold(c.inner, number, times, then))
    if isinstance(c, Then):
        inner = None if c.inner is None else fold(c.inner, number, times, then)
        return then(inner, c.op, number(c.number))
    return number(c)
