"""Print plan expressions as Python/torch source: per tensor (`loop`) or over lists of tensors
(`foreach`, torch's multi-tensor `_foreach_*` ops). Used by `codegen.py`.

`Printer.expr(e)` returns (source, is_tensor). The arithmetic shapes of the rewrite table
(nldsl/lower/rewrites.py: lerp, add with alpha, addcdiv, addcmul, sqrt of a quotient) print as
its single torch op, the one the evaluator computes from the same table, so generated code
computes what the reference computes.

Only text nldsl produces reaches the source: a spec name prints as `u_<name>` (`user`), a
namespace no generated variable uses, so no user name shadows generated code or a Python
builtin; numbers and strings are formatted here (`literal`). Each node is printed once per
statement (memoised), so printing is linear in the expression's size; a subexpression with
many parentheses is hoisted into a temporary (`_tN = ...`, in `pending`), because Python
refuses source nested more than 200 parentheses deep. `codegen` emits each statement through
`Printer.emit` into an `Emitter` (nldsl/lower/emit.py), which puts the temporaries first.
"""
from __future__ import annotations

import math

from nldsl.language import ast
from nldsl.language.builtins import FUNCTIONS
from nldsl.errors import NLDSLCompileError, Problem
from nldsl.lower import rewrites
from nldsl.lower.emit import Emitter

_FOREACH_BINARY = {"+": "add", "-": "sub", "*": "mul", "/": "div"}
_FOREACH_UNARY = {"sqrt", "exp", "log", "abs", "sign", "sigmoid", "tanh"}
_TORCH_UNARY = {"sqrt": "torch.sqrt", "exp": "torch.exp", "log": "torch.log", "abs": "torch.abs",
                "sign": "torch.sign", "tanh": "torch.tanh", "sigmoid": "torch.sigmoid",
                "relu": "torch.relu", "gelu": "F.gelu", "silu": "F.silu", "softplus": "F.softplus"}
_KERNELS = {"l2norm", "outer", "transpose", "dot", "l2", "orthogonality", "newton_schulz",
            "norm", "sum", "mean", "size", "ndim", "trace", "softmax", "divide_or_zero",
            "clamp", "stopgrad", "rmsnorm", "layernorm", "lp", "huber", "concat",
            "lerp", "addcmul"}
_NUMBERS = {"size", "ndim"}
#: A hoisted temporary keeps each line's parentheses far below Python's limit of 200.
MAX_PARENS = 40

#: Calls whose foreach code needs a list of tensors of one shape: shape values, grouped Newton-Schulz.
SHAPED = ("size", "ndim", "newton_schulz")


class NotVectorizable(Exception):
    """The expression needs per-tensor code (a shape-dependent value or a matrix op in foreach)."""


def user(name: str) -> str:
    """The Python name of a spec name (a NAME token of the grammar) in generated code."""
    return "u_" + name


def literal(value) -> str:
    """Python source for a bool, number, string or tuple of them, formatted by nldsl itself
    (a str subclass is converted to a plain str first, so its own __repr__ never runs)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(int.__index__(value))
    if isinstance(value, float):
        value = float.__float__(value)
        if not math.isfinite(value):
            raise ValueError(f"{value} is not a finite number")
        return float.__repr__(value)
    if isinstance(value, str):
        return str.__repr__(str.__str__(value))
    if isinstance(value, tuple):
        return "(" + "".join(literal(v) + ", " for v in value) + ")"
    raise TypeError(f"cannot write a {type(value).__name__} into generated code")


def _located(node, message: str, expected: str, hint: str) -> NLDSLCompileError:
    span = node.span
    return NLDSLCompileError([Problem(message, span.line, span.col, span.end_line or None,
                                      span.end_col or None, expected, hint, None)])


class Printer:
    def __init__(self, tensors: set[str], foreach: bool, by_shape: bool = False):
        """`by_shape`: foreach code over tensors of one shape (`size(X, d)` is X[0]'s)."""
        self.tensors, self.foreach, self.by_shape = tensors, foreach, by_shape
        self.pending: list[str] = []
        self._memo: dict[int, tuple] = {}
        self._temps = 0
        self._inline = 0

    def expr(self, e: ast.Expr) -> tuple[str, bool | None]:
        """(source, is_tensor); is_tensor is None when a conditional picks a tensor or a number."""
        hit = self._memo.get(id(e))
        if hit is not None and hit[0] is e:
            return hit[1]
        src, tensor = getattr(self, "_" + e.kind)(e)
        if src.count("(") > MAX_PARENS and not self._inline:
            self._temps += 1
            self.pending.append(f"_t{self._temps} = {src}")
            src = f"_t{self._temps}"
        self._memo[id(e)] = (e, (src, tensor))
        return src, tensor

    def emit(self, out: Emitter, line: str) -> None:
        """One statement into `out`, after the temporaries its expressions hoisted; starts a new
        statement."""
        statement, self.pending, self._memo = self.pending + [line], [], {}
        for text in statement:
            out.line(text)

    def inline(self, e: ast.Expr) -> tuple[str, bool | None]:
        """`expr(e)` with nothing hoisted: for a lambda body or a branch evaluated lazily."""
        self._inline += 1
        try:
            return self.expr(e)
        finally:
            self._inline -= 1

    def _number(self, e):
        try:
            return literal(e.value), False
        except ValueError:
            raise _located(e, "this number overflows a float (above 1.8e308)", "a finite number",
                           "write a number below 1.8e308") from None

    def _bool(self, e): return literal(e.value), False
    def _string(self, e): return literal(e.value), False
    def _name(self, e): return user(e.id), e.id in self.tensors

    def _tuple(self, e):
        return "(" + "".join(self.expr(i)[0] + ", " for i in e.items) + ")", False

    def _index(self, e):
        return f"{self.expr(e.value)[0]}[int({self.expr(e.index)[0]})]", False

    def _unary(self, e):
        src, tensor = self.expr(e.operand)
        if e.op == "not":
            if tensor and self.foreach:
                raise NotVectorizable("not")
            return (f"torch.logical_not({src})", True) if tensor else (f"K.logical_not({src})", tensor)
        if tensor and self.foreach:
            return f"torch._foreach_neg({src})", True
        return f"(-{src})", tensor

    def _conditional(self, e):
        cond, ctensor = self.expr(e.cond)
        if ctensor is not False:   # elementwise: torch.where, both sides computed
            if self.foreach:
                raise NotVectorizable("conditional")
            (then, t1), (other, t2) = self.expr(e.then), self.expr(e.otherwise)
            return f"K.where({cond}, {then}, {other})", True
        (then, t1), (other, t2) = self.inline(e.then), self.inline(e.otherwise)
        if self.foreach and t1 != t2:
            raise NotVectorizable("conditional")
        return f"({then} if {cond} else {other})", True if t1 and t2 else (None if t1 or t2 else False)

    def _binary(self, e):
        if e.op in ("and", "or"):
            (left, lt), (right, rt) = self.expr(e.left), self.expr(e.right)
            if lt is False and rt is False:
                return f"({left} {e.op} {right})", False
            if self.foreach:
                raise NotVectorizable(e.op)
            return f"K.logical({e.op!r}, {left}, {right})", True
        match = rewrites.of_sum(e, self._is_tensor)
        if match is not None:
            return self._fused(match), True
        (left, lt), (right, rt) = self.expr(e.left), self.expr(e.right)
        if not (lt or rt):
            return f"({left} {e.op} {right})", False
        if not self.foreach:
            return f"({left} {e.op} {right})", True
        if e.op == "**" and not rt:
            return f"torch._foreach_pow({left}, {right})", True
        if e.op not in _FOREACH_BINARY:
            raise NotVectorizable(e.op)
        name = _FOREACH_BINARY[e.op]
        if lt:
            return f"torch._foreach_{name}({left}, {right})", True
        if e.op == "*":
            return f"torch._foreach_mul({right}, {left})", True
        if e.op == "+":
            return f"torch._foreach_add({right}, {left})", True
        if e.op == "-":
            return f"torch._foreach_add(torch._foreach_neg({right}), {left})", True
        return f"torch._foreach_mul(torch._foreach_reciprocal({right}), {left})", True

    def _is_tensor(self, e: ast.Expr) -> bool | None:
        return self.expr(e)[1]

    def _fused(self, match: rewrites.Fused) -> str:
        """The rewrite table's single torch op (nldsl/lower/rewrites.py)."""
        fe = "torch._foreach_" if self.foreach else "torch."
        args = [self.expr(arg)[0] for arg in match.args]
        sign = "" if match.sign > 0 else "-"
        if match.op == "sqrt_div":
            sqrt = "torch._foreach_sqrt" if self.foreach else "torch.sqrt"
            div = "torch._foreach_div" if self.foreach else "torch.div"
            return f"{div}({sqrt}({args[0]}), math.sqrt({args[1]}))"
        if match.op == "lerp":
            return f"{fe}lerp({args[0]}, {args[1]}, {args[2]})"
        if match.op == "addcmul":
            return f"{fe}addcmul({args[0]}, {args[1]}, {args[2]}, value={sign}1)"
        # `n * rest` unparenthesised, as printed before the table was shared: Python groups it
        # (n * ...) / ..., which the evaluator's n * (rest) can round differently (docs/optimizers.md)
        scale = rewrites.fold(match.scale, lambda n: self.expr(n)[0],
                              lambda n, rest: f"{n} * {rest}",
                              lambda rest, op, n: f"({'1' if rest is None else rest}) {op} {n}")
        if match.op == "add":
            return f"{fe}add({args[0]}, {args[1]}, alpha={sign}({scale}))"
        return f"{fe}addcdiv({args[0]}, {args[1]}, {args[2]}, value={sign}({scale}))"

    def _keywords(self, e) -> str:
        """`, name=value` for each keyword argument: a parameter of the built-in (the table)."""
        params = FUNCTIONS[e.func].params if e.func in FUNCTIONS else ()
        out = ""
        for k in e.kwargs:
            if k.name not in params[1:]:
                raise _located(k, f"{e.func} has no keyword argument {k.name!r}",
                               ", ".join(params[1:]) or "no keyword arguments", "drop it")
            out += f", {k.name}={self.expr(k.value)[0]}"
        return out

    def _call(self, e):
        if e.func == "grad":
            return "grad", True
        match = rewrites.of_sqrt(e, self._is_tensor)
        if match is not None:
            return self._fused(match), True
        args = [self.expr(a) for a in e.args]
        srcs = [s for s, _ in args]
        kwargs = self._keywords(e)
        tensor = any(t is not False for _, t in args)
        if e.func in ("max", "min") and not tensor:
            return f"{e.func}({', '.join(srcs)})", False
        if e.func in _TORCH_UNARY and not tensor:
            return f"K.unary({e.func!r}, {srcs[0]})", False
        if self.foreach:
            return self._foreach_call(e.func, args, kwargs)
        if e.func in ("max", "min"):
            return f"K.{e.func}imum({', '.join(srcs)})", True
        if e.func in _TORCH_UNARY:
            if args[0][1] is None:
                return f"K.unary({e.func!r}, {srcs[0]})", None
            return f"{_TORCH_UNARY[e.func]}({srcs[0]})", True
        if e.func in _KERNELS:
            return f"K.{e.func}({', '.join(srcs)}{kwargs})", e.func not in _NUMBERS
        if e.func in FUNCTIONS:
            raise _located(e, f"the optimizer compiler has no `{e.func}`", "a built-in of "
                           "optimizer specs", "see docs/optimizers.md for the supported built-ins")
        return f"K.apply_memory({user(e.func)}, {srcs[0]})", True

    def _foreach_call(self, func, args, kwargs):
        srcs = [s for s, _ in args]
        if not args[0][1]:
            raise NotVectorizable(func)
        if func in ("max", "min"):
            return f"torch._foreach_{func}imum({', '.join(srcs)})", True
        if func in _FOREACH_UNARY:
            return f"torch._foreach_{func}({srcs[0]})", True
        if func == "lerp":
            return f"torch._foreach_lerp({', '.join(srcs)})", True
        if func == "addcmul":
            return f"torch._foreach_addcmul({srcs[0]}, {srcs[1]}, {srcs[2]}, value={srcs[3]})", True
        if func == "divide_or_zero":
            return f"K.divide_or_zero_each({srcs[0]}, {srcs[1]})", True
        if func == "stopgrad":          # foreach code never differentiates
            return srcs[0], True
        if func == "clamp" and not any(t for _, t in args[1:]):
            return f"torch._foreach_clamp_max(torch._foreach_clamp_min({srcs[0]}, {srcs[1]}), " \
                   f"{srcs[2]})", True
        rest = "".join(", " + s for s in srcs[1:])
        if func in SHAPED and self.by_shape and not any(t for _, t in args[1:]):
            if func == "newton_schulz":
                return f"K.newton_schulz_group({srcs[0]}{rest}{kwargs})", True
            return f"K.{func}({srcs[0]}[0]{rest})", False
        raise NotVectorizable(func)
