"""Print plan expressions as Python/torch source: per tensor (`loop`) or over lists of tensors
(`foreach`, torch's multi-tensor `_foreach_*` ops). Used by `codegen.py`.

`Printer.expr(e)` returns (source, is_tensor). The arithmetic shapes the evaluator fuses
(lerp, add with alpha, addcdiv, addcmul, sqrt of a quotient) print as the same single torch op,
so generated code computes what the reference computes.
"""
from __future__ import annotations

from nldsl import ast

_PY_OPS = {"+", "-", "*", "/", "**", "<", "<=", ">", ">=", "==", "!=", "@"}
_FOREACH_BINARY = {"+": "add", "-": "sub", "*": "mul", "/": "div"}
_FOREACH_UNARY = {"sqrt", "exp", "log", "abs", "sign", "sigmoid", "tanh"}
_TORCH_UNARY = {"sqrt": "torch.sqrt", "exp": "torch.exp", "log": "torch.log", "abs": "torch.abs",
                "sign": "torch.sign", "tanh": "torch.tanh", "sigmoid": "torch.sigmoid",
                "relu": "torch.relu", "gelu": "F.gelu", "silu": "F.silu", "softplus": "F.softplus"}
_KERNELS = {"l2norm", "outer", "transpose", "dot", "l2", "orthogonality", "newton_schulz",
            "norm", "sum", "mean", "size", "ndim", "trace", "softmax", "divide_or_zero"}


#: Calls whose foreach code needs a list of tensors of one shape: shape values, grouped Newton-Schulz.
SHAPED = ("size", "ndim", "newton_schulz")


class NotVectorizable(Exception):
    """The expression needs per-tensor code (a shape-dependent value or a matrix op in foreach)."""


class Printer:
    def __init__(self, tensors: set[str], foreach: bool, by_shape: bool = False):
        """`by_shape`: foreach code over tensors of one shape (`size(X, d)` is X[0]'s)."""
        self.tensors, self.foreach, self.by_shape = tensors, foreach, by_shape

    def expr(self, e: ast.Expr) -> tuple[str, bool | None]:
        """(source, is_tensor); is_tensor is None when a conditional picks a tensor or a number."""
        return getattr(self, "_" + e.kind)(e)

    def _number(self, e): return repr(e.value), False
    def _bool(self, e): return repr(e.value), False
    def _string(self, e): return repr(e.value), False
    def _name(self, e): return e.id, e.id in self.tensors

    def _tuple(self, e):
        return "(" + "".join(self.expr(i)[0] + ", " for i in e.items) + ")", False

    def _index(self, e):
        return f"{self.expr(e.value)[0]}[{self.expr(e.index)[0]}]", False

    def _unary(self, e):
        src, tensor = self.expr(e.operand)
        if e.op == "not":
            return f"(not {src})", False
        if tensor and self.foreach:
            return f"torch._foreach_neg({src})", True
        return f"(-{src})", tensor

    def _conditional(self, e):
        cond, ctensor = self.expr(e.cond)
        (then, t1), (other, t2) = self.expr(e.then), self.expr(e.otherwise)
        if ctensor or (self.foreach and t1 != t2):
            raise NotVectorizable("conditional")
        return f"({then} if {cond} else {other})", True if t1 and t2 else (None if t1 or t2 else False)

    def _binary(self, e):
        if e.op in ("and", "or"):
            return f"({self.expr(e.left)[0]} {e.op} {self.expr(e.right)[0]})", False
        fused = self._fused(e)
        if fused is not None:
            return fused, True
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

    def _scaled(self, e):
        """(coefficient source, tensor source) when e is a number times a tensor."""
        if isinstance(e, ast.Binary) and e.op in "*/":
            (left, lt), (right, rt) = self.expr(e.left), self.expr(e.right)
            if e.op == "*" and not lt and rt:
                inner = self._scaled(e.right)
                return (f"{left} * {inner[0]}", inner[1]) if inner else (left, right)
            if lt and not rt:
                coef, tensor = self._scaled(e.left) or ("1", left)
                return f"({coef}) {e.op} {right}", tensor
        return None

    def _fused(self, e: ast.Binary):
        if e.op not in "+-":
            return None
        fe = "torch._foreach_" if self.foreach else "torch."
        a, at = self.expr(e.left)
        right, sign = e.right, "" if e.op == "+" else "-"
        if isinstance(right, ast.Binary) and right.op == "/":
            scaled = self._scaled(right.left)
            den, dt = self.expr(right.right)
            if scaled and at and dt:
                return f"{fe}addcdiv({a}, {scaled[1]}, {den}, value={sign}({scaled[0]}))"
        if not (isinstance(right, ast.Binary) and right.op == "*"):
            return None
        inner = right.right
        if (e.op == "+" and isinstance(inner, ast.Binary) and inner.op == "-" and inner.right == e.left):
            (w, wt), (b, bt) = self.expr(right.left), self.expr(inner.left)
            if at and bt and not wt:
                return f"{fe}lerp({a}, {b}, {w})"
            return None
        (s, st), (b, bt) = self.expr(right.left), self.expr(right.right)
        if at and bt and st is False:
            return f"{fe}add({a}, {b}, alpha={sign}({s}))"
        if at and bt and st is True:
            return f"{fe}addcmul({a}, {s}, {b}, value={sign}1)"
        return None

    def _call(self, e):
        if e.func == "grad":
            return "grad", True
        if e.func == "sqrt" and isinstance(e.args[0], ast.Binary) and e.args[0].op == "/":
            (top, tt), (bottom, bt) = self.expr(e.args[0].left), self.expr(e.args[0].right)
            if tt and not bt:
                sqrt = "torch._foreach_sqrt" if self.foreach else "torch.sqrt"
                div = "torch._foreach_div" if self.foreach else "torch.div"
                return f"{div}({sqrt}({top}), math.sqrt({bottom}))", True
        args = [self.expr(a) for a in e.args]
        srcs = [s for s, _ in args]
        tensor = any(t for _, t in args)
        if e.func in ("max", "min") and not tensor:
            return f"{e.func}({', '.join(srcs)})", False
        if e.func in _TORCH_UNARY and not tensor:
            return f"math.{e.func}({srcs[0]})", False
        if self.foreach:
            return self._foreach_call(e.func, args)
        if e.func in ("max", "min"):
            return f"torch.{e.func}imum({', '.join(srcs)})", True
        if e.func in _TORCH_UNARY:
            return f"{_TORCH_UNARY[e.func]}({srcs[0]})", True
        if e.func == "lerp":
            return f"torch.lerp({', '.join(srcs)})", True
        if e.func == "addcmul":
            return f"torch.addcmul({srcs[0]}, {srcs[1]}, {srcs[2]}, value={srcs[3]})", True
        if e.func in _KERNELS:
            return f"K.{e.func}({', '.join(srcs)})", e.func not in ("size", "ndim")
        return f"{e.func}({srcs[0]})", True

    def _foreach_call(self, func, args):
        srcs = [s for s, _ in args]
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
        rest = "".join(", " + s for s in srcs[1:])
        if func in SHAPED and self.by_shape and args[0][1] and not any(t for _, t in args[1:]):
            if func == "newton_schulz":
                return f"K.newton_schulz_group({srcs[0]}{rest})", True
            return f"K.{func}({srcs[0]}[0]{rest})", False
        raise NotVectorizable(func)
