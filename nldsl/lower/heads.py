"""The head split and merge of a `heads H` level, computed at lowering time. Torch-free.

docs/language.md, "Heads": in a `heads H` level a value is *split* (one per head) or *unsplit*
(the same for every head: `x`, a projection `x @ Wk`). A function or memory application splits
its tensor arguments (width H * d -> H heads of width d; width H -> one scalar per head; a
width that is not a multiple of H stays unsplit and broadcasts); an elementwise operation
between a split and an unsplit operand splits the unsplit one unless its width already equals
the split one's; `@` splits a vector only against a per-head matrix or vector. Outside its level
a per-head value is seen merged, width H * d.

With d = 1 a width H * 1 is both H heads of width 1 and one scalar per head; the use decides.
A split keeps the scalar reading (a gate), and where a vector is needed (a memory's input,
`outer`, `concat`, an index, a last-dim function such as `l2norm`, a split operand of `@`, a
vector against a matrix) a scalar per head is a vector of width 1 (`vector`). A context's
`HeadSplit` records which (`width` 1 or None), and the runtime follows the record
(`Frame.split_as`).

`head_steps` follows these rules over the concrete shapes of one lowered level (widths from the
hyper-parameter values passed) and returns the level's `HeadSplit`s (contexts entering the
heads) and `HeadMerge`s (reads leaving them). The runtime's `Frame` applies the same rules to
tensors; the compiled module checks, on one probe token, that the two agree.
"""
from __future__ import annotations

from dataclasses import dataclass

from nldsl.language import ast
from nldsl.language.builtins import LAST_DIM_SHAPES, shaped
from nldsl.lower.program import HeadMerge, HeadSplit

#: Built-ins by what they do to value dims (the shape column of nldsl/language/builtins.py;
#: nldsl/runtime/functions.py computes them).
SAME = frozenset(shaped("elementwise", "identity", "last_dim_keep", "positional"))
#: Attention: the width of its values (the first stream's, when they are a tuple of streams).
ATTENTION = frozenset(shaped("attention"))
#: Functions of a vector and its token's position (rope): a vector, as for LAST_DIM.
POSITIONAL = frozenset(shaped("positional"))
LAST_TO_ONE = frozenset(shaped("last_dim_reduce"))
REDUCE_ALL = frozenset(shaped("reduce_all"))
SCALAR = frozenset(shaped("number"))
BROADCAST = frozenset(shaped("broadcast"))
#: Functions of the last dim: a per-head scalar is a vector of width 1 there (`vector`).
LAST_DIM = frozenset(shaped(*LAST_DIM_SHAPES))


class Unknown(Exception):
    """A value whose shape this module cannot follow (a construct the runtime rejects)."""


@dataclass(frozen=True)
class Value:
    dims: tuple[int, ...]          # value dims, per head when split
    split: bool = False


SCALAR_VALUE = Value(())


def head_steps(level, program_like) -> tuple[tuple[HeadSplit, ...], tuple[HeadMerge, ...]]:
    """(splits, merges) of a `heads H` level; () and () without heads. `program_like` has
    `dim`, `params`, `hparams`, `outer_contexts` and the levels lowered so far (`levels`)."""
    if level.heads is None:
        return (), ()
    shapes = HeadShapes(level, program_like)
    h = level.heads
    splits, merges = [], []
    for name in level.contexts:
        if name in level.memories:               # a derived memory: per head, like its states
            continue
        value = shapes.split(shapes.name(name))
        if value.split:
            splits.append(HeadSplit(name, h, value.dims[-1] if value.dims else None))
    for name in level.reads:
        value = shapes.name(name)
        if value.split:
            merges.append(HeadMerge(name, h, value.dims[-1] if value.dims else None))
    return tuple(splits), tuple(merges)


class HeadShapes:
    """The value dims of expressions in one level's frame, as runtime/frame.py lays them out."""

    def __init__(self, level, program):
        self.level, self.program, self.h = level, program, level.heads
        self.memo: dict[str, Value] = {}

    # -- the Frame rules, on shapes -------------------------------------------------------
    def is_split(self, v: Value) -> bool:
        return v.split and self.h is not None and self.h > 1

    def split(self, v: Value) -> Value:
        h = self.h
        if h == 1 and v.dims == (1,):
            return Value((), True)                       # heads 1: a width 1 is a scalar
        if h is None or not v.dims or v.split or v.dims[-1] % h:
            return v
        width = v.dims[-1] // h
        if width == 1 and len(v.dims) == 1:
            return Value((), True)                       # a gate of width H: a scalar per head
        return Value(v.dims[:-1] + (width,), True)

    def vector(self, v: Value) -> Value:
        """Where a vector is needed (a memory's input, `outer`, `concat`, an index, a last-dim
        function, a split operand of `@`), one scalar per head is a vector of width 1: with
        head_dim 1, the use decides between the two readings of a width H * 1."""
        return Value((1,), v.split) if self.h is not None and not v.dims else v

    def split_like(self, v: Value, other: Value) -> Value:
        if not self.is_split(other) or self.is_split(v) or not v.dims:
            return v
        if other.dims and v.dims[-1] == other.dims[-1]:
            return v
        return self.split(v)

    def merged(self, v: Value) -> Value:
        """A value of this frame seen from an unsplit frame."""
        if not v.split:
            return v
        if not v.dims:
            return Value((self.h,))
        return Value(v.dims[:-1] + (v.dims[-1] * self.h,))

    def align(self, a: Value, b: Value) -> Value:
        a, b = self.split_like(a, b), self.split_like(b, a)
        longer, shorter = (a.dims, b.dims) if len(a.dims) >= len(b.dims) else (b.dims, a.dims)
        shorter = (1,) * (len(longer) - len(shorter)) + shorter
        dims = tuple(x if y == 1 else y for x, y in zip(longer, shorter))
        return Value(dims, a.split or b.split)

    # -- expressions ----------------------------------------------------------------------
    def name(self, name: str) -> Value:
        level, program = self.level, self.program
        if name not in self.memo:
            if name in level.memories:           # flat weights, per head like the states
                self.memo[name] = Value((level.memories[name].size,), self.h is not None)
            elif name in level.contexts:
                self.memo[name] = self(level.contexts[name])
            elif name in level.reads:
                self.memo[name] = self(level.reads[name][0])
            elif name in level.states or name in level.hidden:
                shape = level.states[name].shape if name in level.states else level.hidden[name]
                self.memo[name] = Value(tuple(shape), self.h is not None)
            elif name == "x":
                self.memo[name] = Value((program.dim,))
            elif name == "t" or name in program.hparams:
                self.memo[name] = SCALAR_VALUE
            elif name in program.params and program.params[name].role != "conv":
                self.memo[name] = Value(tuple(program.params[name].shape))
            elif name in program.outer_contexts:
                self.memo[name] = HeadShapes(_Outer(), program)(program.outer_contexts[name])
            else:
                self.memo[name] = self._elsewhere(name)
        return self.memo[name]

    def _elsewhere(self, name: str) -> Value:
        """A context, read or state of another level, seen merged from this one."""
        for other in self.program.levels:
            if other.name != self.level.name and (name in other.contexts or name in other.reads
                                                  or name in other.states):
                seen = HeadShapes(other, self.program)
                return seen.merged(seen.name(name))
        raise Unknown(name)

    def __call__(self, e: ast.Expr) -> Value:
        if isinstance(e, (ast.Number, ast.Bool, ast.String, ast.Tuple)):   # numbers
            return SCALAR_VALUE
        if isinstance(e, ast.Name):
            return self.name(e.id)
        if isinstance(e, ast.Unary):
            return self(e.operand)
        if isinstance(e, ast.Index):
            value = self.vector(self.split(self(e.value)))
            return Value(value.dims[1:], value.split) if value.dims else value
        if isinstance(e, ast.Conditional):
            return self.align(self.align(self(e.then), self(e.otherwise)), self(e.cond))
        if isinstance(e, ast.Binary):
            left, right = self(e.left), self(e.right)
            return self._matmul(left, right) if e.op == "@" else self.align(left, right)
        if isinstance(e, ast.Call):
            return self._call(e)
        raise Unknown(type(e).__name__)

    def _matmul(self, left: Value, right: Value) -> Value:
        if self.is_split(right) and not self.is_split(left) and len(left.dims) == 1:
            left = self.vector(self.split(left))
        if self.is_split(left) and not self.is_split(right) and len(right.dims) == 1:
            right = self.vector(self.split(right))
        if len(left.dims) >= 2:                  # a per-head scalar against a matrix: width 1
            right = self.vector(right)
        if len(right.dims) >= 2:
            left = self.vector(left)
        a, b, split = left.dims, right.dims, left.split or right.split
        if len(a) == 1 and len(b) == 1:
            return Value((), split)
        if len(a) == 1 and len(b) == 2:
            return Value(b[-1:], split)
        if len(a) == 2 and len(b) == 1:
            return Value(a[:1], split)
        if len(a) >= 2 and len(b) >= 2:
            return Value(a[:-1] + b[-1:], split)
        raise Unknown("@")

    def _call(self, e: ast.Call) -> Value:
        func = e.func
        if func == "conv":                       # runs unsplit, on the merged value
            return self.merged(self(e.args[0]))
        if func in ATTENTION:                    # per head, to the values' width
            values = e.args[2].items[0] if isinstance(e.args[2], ast.Tuple) else e.args[2]
            return self.vector(self.split(self(values)))
        args = [self(a) for a in e.args]
        if func in SCALAR:
            return SCALAR_VALUE
        memory = self.name(func) if any(func in lv.states or func in lv.memories
                                        for lv in self.program.levels) else None
        if memory is not None:                   # M(u) = M u (per head in M's own level)
            layout = next(lv.states[func].mlp if func in lv.states else lv.memories[func]
                          for lv in self.program.levels if func in lv.states or func in lv.memories)
            if layout is not None:               # an MLP maps d_0 to d_L
                return Value(layout.widths[-1:], memory.split)
            return Value(memory.dims[:1], memory.split) if len(memory.dims) == 2 else _unknown(func)
        if not args:
            raise Unknown(func)
        first = self.split(args[0])
        if func in LAST_DIM or func in POSITIONAL:
            first = self.vector(first)
        if func in SAME or (func == "clamp" and all(not a.dims for a in args[1:])):
            return first
        if func in LAST_TO_ONE:
            return Value(first.dims[:-1] + (1,), first.split)
        if func == "transpose":
            return Value(first.dims[:-2] + first.dims[-1:] + first.dims[-2:-1], first.split)
        if func == "trace":
            return Value(first.dims[:-2], first.split)
        if func in REDUCE_ALL:
            return Value((), any(self.split(a).split for a in args[:2]))
        if func in BROADCAST:
            value = args[0]
            for other in args[1:]:
                value = self.align(value, other)
            return value
        if func == "outer":
            a, b = self.vector(self.split(args[0])), self.vector(self.split(args[1]))
            return Value(a.dims + b.dims[-1:], a.split or b.split)
        if func == "flatten" and len(first.dims) >= 2:
            return Value(first.dims[:-2] + (first.dims[-2] * first.dims[-1],), first.split)
        if func == "concat":
            parts = [self.vector(self.split(a)) for a in args]
            return Value(parts[0].dims[:-1] + (sum(p.dims[-1] for p in parts),),
                         any(p.split for p in parts))
        if func == "wsum":
            return args[1]
        raise Unknown(func)


class _Outer:
    """The outer level's frame: no heads, no states of its own."""

    name, heads = "outer", None
    states, hidden, contexts, reads, memories = {}, {}, {}, {}, {}


def _unknown(name: str):
    raise Unknown(name)
