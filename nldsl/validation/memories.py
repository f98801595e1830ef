"""What an `mlp(...)` memory may take part in (docs/language.md, "MLP memories").

An MLP state is a list of weight matrices W_i [d_i, d_{i-1}], so an expression that names it
(outside a forward pass `M(u)`) is *per weight* (nldsl/language/memories.py): layer by layer, the same
expression on the matrices W_i, as on a matrix state. It is defined when, on every layer,

    - its memories have one layout (`A / norm(A)`, `M + N` with `state N like M`);
    - its functions are defined on one matrix (entrywise, functions of the rows, transposes,
      reductions to a number: nldsl/language/memories.py PER_WEIGHT_SHAPES), not `@`, losses, `outer`;
    - every other operand is one number per head and token (width 1 or the level's heads);
    - its value has the weight's shape [d_i, d_{i-1}] (`norm(A)` alone is [d_i, 1]: no MLP),

and it is the value of a `let` (a derived memory: `W(k)` is its forward pass) or the new value
of an MLP state of its layout (`M <- decay * M + S`). Everything else (`M @ k`, a key holding
an MLP, `M - outer(M(k) - k, k)`, a per-channel factor in an update) is a located error here,
before any compiler sees it. A rule's channel-wise lr, decay or beta is check_channel_gates'.
"""
from __future__ import annotations

from nldsl.language import ast
from nldsl.validation.common import Checker
from nldsl.validation.shapes import Dim, ShapeChecker, shape_checker
from nldsl.language.consteval import children
from nldsl.language.memories import memory_layouts, per_weight_function, state_layouts
from nldsl.language.printer import format_expr

_ALLOWED = ("M(u); per weight: a let or an MLP state's new value built from MLP memories of one "
            "layout, numbers (one per head), and functions of one matrix (norm, softmax, abs, "
            "sum, transpose, ...) that keep each weight's shape")
_HINT = "apply the memory (M(u)) to get a value; docs/language.md, MLP memories"


def check_mlp_algebra(c: Checker) -> None:
    layouts = memory_layouts(c.graph)
    if not layouts:
        return
    walker = _Walker(c, layouts)
    for level in c.graph.levels.values():
        walker.one = {(1,) * len(walker.shapes.trials)}
        if getattr(level, "heads", None) is not None:
            heads = walker.shapes.dim(level.heads)
            walker.one |= {heads.values} if heads is not None else set()
        for context in level.contexts.values():
            if context.role == "let" and context.name in layouts:
                walker.memory(context.value, layouts[context.name], f"the let {context.name!r}")
            else:
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
            elif target is not None:
                walker.keeps_shapes(update.value, target, f"the new value of {update.target}")
    if c.graph.output is not None:
        walker.one = {(1,) * len(walker.shapes.trials)}
        walker.value(c.graph.output, "`out`")


class _Walker:
    def __init__(self, c: Checker, layouts: dict):
        self.c, self.layouts = c, layouts
        self.shapes = shape_checker(c)
        self.one = {(1,) * len(self.shapes.trials)}     # the widths of one number

    def value(self, e, where: str) -> None:
        """e must be a value (a tensor or number), not an MLP."""
        if self.kind(e) is not None:
            self.reject(e, f"{where} is an mlp memory, `{format_expr(e)}`; only a let or a "
                        "state's update may hold one")

    def memory(self, e, layout, where: str) -> None:
        """e is a let's per-weight expression: defined, and of the weights' shapes."""
        reported = len(self.c.problems)
        if self.kind(e) == layout and len(self.c.problems) == reported:
            self.keeps_shapes(e, layout, where)

    def reject(self, node, message: str, hint: str = _HINT) -> None:
        self.c.report(node, message, expected=_ALLOWED, hint=hint)

    def kind(self, e):
        """The layout of an MLP-valued (per-weight) e, None for a value; reports misuse in e."""
        if isinstance(e, ast.Name):
            return self.layouts.get(e.id)
        if isinstance(e, ast.Call) and e.func in self.layouts:
            for arg in e.args:
                self.value(arg, f"the input of {e.func}")
            return None
        parts = [(child, self.kind(child)) for child in children(e)]
        found = [layout for _, layout in parts if layout is not None]
        if not found:
            return None
        if any(layout != found[0] for layout in found):
            self.reject(e, f"`{format_expr(e)}` combines mlp memories of different layouts",
                        hint="per weight needs the same widths and options (`state N like M`)")
            return None
        defined = (isinstance(e, ast.Unary) and e.op == "-") or \
            (isinstance(e, ast.Binary) and e.op in ("+", "-", "*", "/", "**")) or \
            (isinstance(e, ast.Call) and per_weight_function(e.func)) or \
            (isinstance(e, ast.Conditional) and self.kind(e.cond) is None)
        if not defined:
            what = f"`{e.op}`" if isinstance(e, ast.Binary) else \
                f"{e.func}" if isinstance(e, ast.Call) else "this expression"
            self.reject(e, f"`{format_expr(e)}` applies {what} to an mlp memory, which is not "
                        "defined per weight matrix")
            return None
        for child, layout in parts:
            if layout is None:
                self._one_number(child, e)
        return found[0]

    def _one_number(self, factor, e) -> None:
        """A value inside a per-weight expression: one number (per head and token)."""
        dims = self.shapes.infer(factor)
        if dims and dims[-1] is not None and (len(dims) > 1 or dims[-1].values not in self.one):
            width = ", ".join(d.text if d is not None else "?" for d in dims)
            self.reject(factor, f"`{format_expr(factor)}` has width [{width}] inside the "
                        f"per-weight expression `{format_expr(e)}`: a value there must be one "
                        "number per head (which dim of which layer would a vector scale?)",
                        hint="make it one number per head (a gate `x @ W` of width heads, or a "
                             "reduction); a rule's lr, decay or beta may be channel-wise")

    def keeps_shapes(self, e, layout, where: str) -> None:
        """Per layer, e has the weight's shape [d_i, d_{i-1}]."""
        widths = [self.shapes.dim(w) for w in layout.widths]
        if None in widths:
            return
        names = {n for n, shape in self.layouts.items() if shape == layout}
        for i, (d_in, d_out) in enumerate(zip(widths, widths[1:])):
            found = _LayerShapes(self.shapes, {n: (d_out, d_in) for n in names}).infer(e)
            if found is None or None in found or tuple(found[-2:]) == (d_out, d_in):
                continue
            self.c.report(e, f"{where}, `{format_expr(e)}`, has shape "
                          f"[{', '.join(d.text for d in found)}] on layer {i + 1}, whose weight "
                          f"is [{d_out.text}, {d_in.text}]: per weight, an mlp memory's value "
                          "keeps each weight's shape", expected=_ALLOWED,
                          hint="a reduction (norm, sum) of a weight is a number for scaling it, "
                               "e.g. `A / norm(A)`, not a memory")
            return


class _LayerShapes(ShapeChecker):
    """Shapes with MLP memories bound to one layer's weight shape [d_out, d_in], the contexts'
    widths those `shapes` inferred. Quiet: what it would report, the spec's own shape check
    reports already (or it concerns a layer's binding, which keeps_shapes says)."""

    def __init__(self, shapes: ShapeChecker, bound: dict[str, tuple[Dim, Dim]]):
        super().__init__(_Quiet(shapes.c))
        self.shapes, self.bound = dict(shapes.shapes), bound

    def infer(self, node):
        if isinstance(node, ast.Name) and node.id in self.bound:
            return self.bound[node.id]
        return super().infer(node)


class _Quiet:
    """A Checker's graph and spec, with reports dropped."""

    def __init__(self, c: Checker):
        self.graph, self.decl, self.source = c.graph, c.decl, c.source

    def report(self, *args, **kwargs) -> None:
        pass


def check_channel_gates(c: Checker) -> None:
    """A rule's `lr`, `decay` or `beta` is one number (per head and token) or a vector that
    scales its state's channels (docs/language.md, "Channel-wise gates"; runtime/layerwise.py):
    on a weight matrix W [d_out, d_in] (a matrix memory [d_v, d_k], or each layer of an MLP) a
    width d_in scales the columns, W diag(g) (Gated Linear Attention's per-key-channel gate),
    else a width d_out the rows, diag(g) W. On an MLP every layer must take it one way or the
    other; any other width has no defined broadcast. A `layernorm` memory's gamma [d_L] is a
    weight of output channels only: the gate's width must be d_L there."""
    shapes = None
    layouts = state_layouts(c.graph)
    for level in c.graph.levels.values():
        for objective in level.objectives:
            target = objective.state or next(iter(level.states), None)
            state = level.states.get(target)
            if state is None:
                continue
            shapes = shapes or shape_checker(c)
            layout = layouts.get(target)
            layers = _weights(state.decl.shape, layout, shapes)
            if layers is None:
                continue
            heads = shapes.dim(level.heads) if getattr(level, "heads", None) is not None else None
            one = {(1,) * len(shapes.trials)} | ({heads.values} if heads is not None else set())
            for rule in objective.rules:
                for arg in list(rule.args) + [k.value for k in rule.kwargs]:
                    shapes.in_level(level)        # a rule's argument is one head's value
                    found = shapes.infer(arg)
                    shapes.leave()
                    if not found or found[-1] is None or (len(found) == 1 and
                                                          found[-1].values in one):
                        continue
                    width = found[-1]
                    ok = len(found) == 1 and all(_scales(width, d_out, d_in, heads)
                                                 for d_out, d_in in layers)
                    if ok and layout is not None and "layernorm" in layout.options:
                        ok = _scales(width, layers[-1][0], layers[-1][0], heads)
                    if ok:
                        continue
                    shown = ", ".join(f"[{o.text}, {i.text}]" for o, i in layers)
                    normed = layout is not None and "layernorm" in layout.options
                    if normed:
                        shown += f", gamma [{layers[-1][0].text}]"
                    c.report(arg, f"`{format_expr(arg)}` gates {target} (weights {shown}) with "
                             f"width [{', '.join(d.text for d in found)}]: a channel-wise gate "
                             "scales each weight's input (d_in) or output (d_out) channels",
                             expected="one number per head, or a vector whose width is, in "
                                      "every weight, its d_in or its d_out"
                                      + (" (gamma's: d_L)" if normed else ""),
                             hint="project the gate to a width every weight has (x @ W of width "
                                  "d_k for a matrix memory, head_dim for a head_dim -> .. -> "
                                  "head_dim MLP), or to one number per head")


def _weights(shape, layout, shapes: ShapeChecker):
    """The [d_out, d_in] Dims of a state's weight matrices: one for a matrix, one per layer for
    an MLP; None for any other shape (or an unknown dim)."""
    if layout is not None:
        widths = [shapes.dim(w) for w in layout.widths]
        return None if None in widths else list(zip(widths[1:], widths[:-1]))
    dims = getattr(shape, "dims", None)
    if dims is None or len(dims) != 2:
        return None
    d_out, d_in = shapes.dim(dims[0]), shapes.dim(dims[1])
    return None if d_out is None or d_in is None else [(d_out, d_in)]


def _scales(width: Dim, d_out: Dim, d_in: Dim, heads: Dim | None) -> bool:
    """Is `width` one of the weight's channel widths (per head, or merged over the heads)?"""
    sides = {d_out.values, d_in.values}
    if heads is not None:
        sides |= {tuple(a * b for a, b in zip(d.values, heads.values)) for d in (d_out, d_in)}
    return width.values in sides
