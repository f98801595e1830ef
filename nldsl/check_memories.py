"""What an `mlp(...)` memory may take part in (docs/language.md, "MLP memories").

An MLP state is a list of weight matrices, not a tensor, so only these have a meaning:

    M(u)                 the forward pass (a value of width d_L)
    a * M, M * a, M / a  every weight scaled by a, one number (per head and token)
    M + N, M - N, -M     per weight, for two MLP states of one layout (widths and options)

and an MLP-valued expression may only be the new value of an MLP state of that layout
(`M <- decay * M + S`). Everything else (`norm(M)`, `outer(M(k) - k, k)` added to M, `M @ k`,
a `let` holding an MLP) would be a tensor operation on something that is not a tensor: a
located error here, before any compiler sees it.
"""
from __future__ import annotations

from nldsl import ast
from nldsl.check_common import Checker
from nldsl.check_shapes import shape_checker
from nldsl.consteval import children
from nldsl.printer import format_expr

_ALLOWED = "M(u), a * M or M / a with a number a, M + N or M - N for MLP states of one layout"


def check_mlp_algebra(c: Checker) -> None:
    layouts = {s.name: _layout(s.decl.shape, c) for s in c.graph.states()}
    layouts = {name: layout for name, layout in layouts.items() if layout is not None}
    if not layouts:
        return
    walker = _Walker(c, layouts)
    for level in c.graph.levels.values():
        walker.one = {(1,) * len(walker.shapes.trials)}
        if getattr(level, "heads", None) is not None:
            heads = walker.shapes.dim(level.heads)
            walker.one |= {heads.values} if heads is not None else set()
        for context in level.contexts.values():
            walker.value(context.value, f"the {context.role} {context.name!r}")
        for read in level.reads.values():
            walker.value(read.value, f"the read {read.name!r}")
        for objective in level.objectives:
            walker.value(objective.loss, "a loss")
            for rule in objective.rules:
                for arg in list(rule.args) + [k.value for k in rule.kwargs]:
                    walker.value(arg, f"an argument of {rule.name}")
        for update in level.updates:
            reported = len(c.problems)
            kind = walker.kind(update.value)
            target = layouts.get(update.target)
            if len(c.problems) > reported:
                continue                    # misuse inside the value, reported where it is
            if kind is not None and target is None:
                walker.reject(update.value, f"{update.target} is not an mlp memory but its new "
                              f"value `{format_expr(update.value)}` is")
            elif target is not None and kind != target:
                c.report(update.value, f"{update.target} is an mlp memory: its new value must be "
                         f"one of the same layout, not `{format_expr(update.value)}`",
                         expected=_ALLOWED, hint="an MLP state changes per weight; its rule's "
                         "gradient step already is (gd, momentum, dgd)")
    if c.graph.output is not None:
        walker.one = {(1,) * len(walker.shapes.trials)}
        walker.value(c.graph.output, "`out`")


def _layout(shape, c: Checker):
    """The MLPShape a state has (through `like`), else None."""
    seen = set()
    while isinstance(shape, ast.LikeShape) and shape.name not in seen:
        seen.add(shape.name)
        state = next((s for s in c.graph.states() if s.name == shape.name), None)
        shape = state.decl.shape if state is not None else None
    return shape if isinstance(shape, ast.MLPShape) else None


class _Walker:
    def __init__(self, c: Checker, layouts: dict):
        self.c, self.layouts = c, layouts
        self.shapes = shape_checker(c)
        self.one = {(1,) * len(self.shapes.trials)}     # the widths of one number

    def value(self, e, where: str) -> None:
        """e must be a value (a tensor or number), not an MLP."""
        if self.kind(e) is not None:
            self.reject(e, f"{where} is an mlp memory, `{format_expr(e)}`; only a state's "
                        "update may hold one")

    def reject(self, node, message: str,
               hint: str = "apply the memory (M(u)) to get a value; docs/language.md, "
                           "MLP memories") -> None:
        self.c.report(node, message, expected=_ALLOWED, hint=hint)

    def kind(self, e):
        """The MLPShape of an MLP-valued e, None for a value; reports misuse inside e."""
        if isinstance(e, ast.Name):
            return self.layouts.get(e.id)
        if isinstance(e, ast.Unary) and e.op == "-":
            return self.kind(e.operand)
        if isinstance(e, ast.Binary) and e.op in ("+", "-", "*", "/"):
            left, right = self.kind(e.left), self.kind(e.right)
            if left is None and right is None:
                return None
            if e.op in "+-" and left == right:
                return left
            if e.op == "*" and (left is None) != (right is None):
                return self._scaled(e, e.left if left is None else e.right, left or right)
            if e.op == "/" and right is None:
                return self._scaled(e, e.right, left)
            self.reject(e, f"`{format_expr(e)}` combines an mlp memory with "
                        + ("an mlp memory of another layout" if left and right else "a value")
                        + f" by `{e.op}`")
            return None
        if isinstance(e, ast.Call) and e.func in self.layouts:
            for arg in e.args:
                self.value(arg, f"the input of {e.func}")
            return None
        for child in children(e):
            if self.kind(child) is not None:
                self.reject(child, f"`{format_expr(child)}` is an mlp memory inside "
                            f"`{format_expr(e)}`, which needs a tensor")
        return None

    def _scaled(self, e, factor, layout):
        """a * M: a must be one number (per head and token): width 1, or the level's heads."""
        dims = self.shapes.infer(factor)
        if dims and dims[-1] is not None and (len(dims) > 1 or dims[-1].values not in self.one):
            self.reject(factor, f"`{format_expr(factor)}` scales an mlp memory but has width "
                        f"[{dims[-1].text}]: a per-channel factor on an mlp memory is not defined",
                        hint="make the factor one number per head (a gate `x @ W` of width "
                             "heads, or a reduction)")
        return layout


def check_channel_gates(c: Checker) -> None:
    """A rule's `lr`, `decay` or `beta` on a matrix memory M [d_v, d_k] is one number (per head
    and token) or a vector of width d_k, which scales M's columns: M diag(g), the per-key-channel
    gate of Gated Linear Attention (docs/language.md, "Channel-wise gates"). Any other width has
    no defined broadcast."""
    shapes = None
    for level in c.graph.levels.values():
        for objective in level.objectives:
            target = objective.state or next(iter(level.states), None)
            state = level.states.get(target)
            dims = getattr(state.decl.shape, "dims", None) if state is not None else None
            if dims is None or len(dims) != 2:
                continue
            shapes = shapes or shape_checker(c)
            d_k = shapes.dim(dims[1])
            heads = shapes.dim(level.heads) if getattr(level, "heads", None) is not None else None
            allowed = {(1,) * len(shapes.trials)} | ({heads.values} if heads is not None else set())
            if d_k is not None:
                allowed.add(d_k.values)
                if heads is not None:
                    allowed.add(tuple(a * b for a, b in zip(d_k.values, heads.values)))
            for rule in objective.rules:
                for arg in list(rule.args) + [k.value for k in rule.kwargs]:
                    found = shapes.infer(arg)
                    if not found or found[-1] is None or (len(found) == 1 and
                                                          found[-1].values in allowed):
                        continue
                    c.report(arg, f"`{format_expr(arg)}` gates the matrix memory {target} "
                             f"[{format_expr(dims[0])}, {format_expr(dims[1])}] with "
                             f"width [{found[-1].text}]: a channel-wise gate scales the key side",
                             expected=f"one number per head, or a vector of width "
                                      f"[{format_expr(dims[1])}] (d_k)",
                             hint="project the gate to the key width (x @ W of width d_k), or to "
                                  "one number per head")
