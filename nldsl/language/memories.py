"""Which names are MLP memories, and what a per-weight expression is (docs/language.md, "MLP
memories"). Torch-free: the validator and the lowering ask it.

An `mlp(...)` state is a list of weight matrices W_1 [d_1, d_0], ..., W_L [d_L, d_{L-1}]. An
expression that names MLP memories of one layout outside a forward pass `M(u)` is a
*per-weight expression*: it means, for each layer i, the same expression on the matrices W_i,
exactly as on a matrix state of shape [d_i, d_{i-1}], and its value is the MLP of the same
layout whose layer i is that matrix:

    (A / norm(A))_i = A_i / norm(A_i)        norm of each row of each weight matrix
    (c * softmax(L))_i = c softmax(L_i)      each row of each weight on the simplex (Memora)

A `let` whose value is a per-weight expression is itself an MLP memory of that layout (a
*derived memory*: `W(k)` is its forward pass). Nothing here reports; validation/memories.py does.
"""
from __future__ import annotations

from nldsl.language import ast
from nldsl.language.builtins import FUNCTIONS
from nldsl.language.consteval import children

#: The built-in shape classes (nldsl/language/builtins.py SHAPES) defined on one weight matrix, and so
#: per weight on an MLP: entrywise functions, functions of the rows, transposes, reductions of
#: a matrix to a number (`sum(transpose(sum(.)))`), Newton-Schulz. Not: losses (a whole MLP's
#: value), `outer`, `concat`, sequence built-ins.
PER_WEIGHT_SHAPES = frozenset({"elementwise", "broadcast", "identity", "last_dim_keep",
                               "last_dim_reduce", "transpose", "trace", "matrix", "number"})


def state_layouts(graph) -> dict[str, ast.MLPShape]:
    """MLP state -> its `mlp(...)` shape, through `like`."""
    shapes = {s.name: s.decl.shape for s in graph.states()}
    found = {}
    for name in shapes:
        shape, seen = shapes[name], set()
        while isinstance(shape, ast.LikeShape) and shape.name not in seen:
            seen.add(shape.name)
            shape = shapes.get(shape.name)
        if isinstance(shape, ast.MLPShape):
            found[name] = shape
    return found


def memory_layouts(graph) -> dict[str, ast.MLPShape]:
    """Every MLP memory: the MLP states and the lets that hold a per-weight expression of them
    (lets of lets too), name -> layout."""
    layouts = state_layouts(graph)
    lets = {c.name: c.value for level in graph.levels.values() for c in level.contexts.values()
            if c.role == "let"}
    changed = True
    while changed:
        changed = False
        for name, value in lets.items():
            if name not in layouts:
                layout = layout_of(value, layouts)
                if layout is not None:
                    layouts[name] = layout
                    changed = True
    return layouts


def layout_of(e, layouts: dict) -> ast.MLPShape | None:
    """The layout of a per-weight expression `e`, None for a value (a tensor or number). The
    first memory found decides; validation/memories.py reports mixtures and misuse."""
    if isinstance(e, ast.Name):
        return layouts.get(e.id)
    if isinstance(e, ast.Call) and (e.func in layouts or e.func not in FUNCTIONS):
        return None                                  # a forward pass M(u) is a value
    if isinstance(e, ast.Binary) and e.op == "@":
        return None
    for child in children(e):
        found = layout_of(child, layouts)
        if found is not None:
            return found
    return None


def per_weight_function(func: str) -> bool:
    return func in FUNCTIONS and FUNCTIONS[func].shape in PER_WEIGHT_SHAPES
