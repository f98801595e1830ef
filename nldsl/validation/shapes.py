"""Symbolic shapes: infer the feature dims of contexts and reads, and report the mismatches
the spec determines statically (a matmul whose inner dims differ, a memory applied to an input
of the wrong width, elementwise operands of different widths).

A dim is an expression over hyper-parameters. Two dims are equal when they agree under several
random assignments of prime numbers to the integer hyper-parameters (polynomial identity
testing); `dim` and `heads * head_dim` are *different* dims, even if some configuration makes
them coincide. Shapes track only trailing feature dims: batch and time dims never mismatch.
"""
from __future__ import annotations

import numbers
import random
from dataclasses import dataclass

from nldsl.language import ast
from nldsl.language.builtins import FUNCTIONS
from nldsl.validation.common import Checker
from nldsl.errors import Source
from nldsl.graph import LevelGraph
from nldsl.language.consteval import calls_in as _calls, hparam_values, names_in, try_evaluate
from nldsl.language.memories import memory_layouts
from nldsl.language.printer import format_expr

TRIALS = 3
_PRIMES = [7919, 7927, 7933, 7937, 7949, 7951, 7963, 7993, 8009, 8011, 8017, 8039, 8053]
#: The shape classes (nldsl/language/builtins.py SHAPES) whose result has the first argument's dims.
_KEEPS_DIMS = frozenset({"elementwise", "identity", "last_dim_keep", "matrix", "sequence_keep",
                         "positional"})


@dataclass(frozen=True)
class Dim:
    text: str
    values: tuple  # the dim under each trial assignment

    def __eq__(self, other):
        return isinstance(other, Dim) and self.values == other.values

    def __hash__(self):
        return hash(self.values)


class ShapeChecker:
    def __init__(self, c: Checker):
        self.c = c
        rng = random.Random(0)
        defaults = hparam_values(c.decl)
        self.trials = []
        for _ in range(TRIALS):
            env = dict(defaults)
            for hparam in c.decl.hparams:
                value = defaults.get(hparam.name)
                if hparam.type == "int" or (isinstance(value, int) and not isinstance(value, bool)):
                    env[hparam.name] = rng.choice(_PRIMES) * rng.randint(1, 7)
            self.trials.append(env)
        self.shapes: dict[str, tuple | None] = {}
        self.states = {s.name: s for s in c.graph.states()}
        self.memories = memory_layouts(c.graph)         # MLP states and lets (memories.py)
        self.heads = 1
        self.known_texts = self._declared_dims()

    def _declared_dims(self) -> dict[tuple, str]:
        """Dims the spec writes down (hyper-parameters, state dims, MLP widths), so that an
        inferred dim is named the way the user wrote it (`head_dim`, not `(heads * head_dim) / heads`)."""
        exprs = [ast.Name(id=h.name) for h in self.c.decl.hparams]
        for state in self.states.values():
            exprs += getattr(state.decl.shape, "dims", []) + getattr(state.decl.shape, "widths", [])
        known: dict[tuple, str] = {(1,) * TRIALS: "1"}
        for expr in exprs:
            found = self.dim(expr)
            if found is not None:
                known.setdefault(found.values, found.text)
        return known

    def named(self, values: tuple, fallback: str) -> Dim:
        return Dim(self.known_texts.get(values, fallback), values) if hasattr(self, "known_texts") \
            else Dim(fallback, values)

    def dim(self, expr: ast.Expr, divide_heads: bool = False) -> Dim | None:
        values = []
        for env in self.trials:
            value = try_evaluate(expr, env)
            if not isinstance(value, (int, float)):
                return None
            values.append(value)
        return Dim(format_expr(expr), tuple(values))

    def state_shape(self, name: str):
        state = self.states[name]
        shape = state.decl.shape
        if isinstance(shape, ast.TensorShape):
            dims = [self.dim(d) for d in shape.dims]
            return None if None in dims else tuple(dims)
        if isinstance(shape, ast.ScalarShape):
            return ()
        return None

    def infer(self, node) -> tuple | None:
        """Trailing dims of an expression, or None when unknown."""
        if isinstance(node, ast.Name):
            if node.id == "x" and self.c.decl.kind == "module" and "dim" in self.c.graph.hparams:
                return (self.dim(ast.Name(id="dim")),)
            if node.id in self.states:
                return self.state_shape(node.id)
            if node.id in self.c.graph.hparams or node.id in ("step", "t"):
                return ()
            owner = self.context_heads.get(node.id)
            if owner is not None and node.id not in self.per_head:    # merged outside its level
                heads, self.heads_dim = self.heads_dim, owner
                merged = self._merge_heads(self.shapes.get(node.id))
                self.heads_dim = heads
                return merged
            return self.shapes.get(node.id)
        if isinstance(node, (ast.Number, ast.Bool)):
            return ()
        if isinstance(node, ast.Unary):
            return self.infer(node.operand)
        if isinstance(node, ast.Binary):
            return self._binary(node)
        if isinstance(node, ast.Conditional):
            return self.infer(node.then)
        if isinstance(node, ast.Call):
            return self._call(node)
        return None

    def _binary(self, node: ast.Binary):
        left, right = self.infer(node.left), self.infer(node.right)
        if node.op == "@":
            if not left or not right:
                return None
            if left[-1] != right[0 if len(right) == 1 else -2]:
                inner = right[0 if len(right) == 1 else -2]
                self.c.report(node, f"shape mismatch in `{format_expr(node)}`: the left side ends "
                              f"in [{left[-1].text}] but the right side expects [{inner.text}]",
                              expected="equal inner dims for @",
                              hint="check the declared shapes of the states involved")
                return None
            return left[:-1] + right[-1:] if len(right) >= 2 else left[:-1]
        if node.op in ("+", "-", "*", "/") and left and right and left[-1] != right[-1] and \
                1 not in left[-1].values and 1 not in right[-1].values:
            self.c.report(node, f"shape mismatch in `{format_expr(node)}`: [{left[-1].text}] vs "
                          f"[{right[-1].text}]", expected="operands of the same width (or scalars)",
                          hint="elementwise operators need matching trailing dims")
            return None
        if node.op in ("+", "-", "*", "/", "**"):
            if left is None or right is None:
                return None
            return left if len(left) >= len(right) else right
        return ()

    def _call(self, node: ast.Call):
        args = [self.infer(a) for a in node.args]
        if node.func in self.states or node.func in self.memories:
            return self._apply_memory(node, args[0] if args else None)
        shape = FUNCTIONS[node.func].shape if node.func in FUNCTIONS else None
        if shape in _KEEPS_DIMS:
            return args[0] if args else None
        if shape == "broadcast":                 # against numbers: the tensor's dims
            return args[0] if args and all(a == () for a in args[1:]) else None
        if shape == "last_dim_reduce":
            return args[0][:-1] + (self.dim(ast.Number(value=1)),) if args and args[0] else None
        if shape in ("reduce_all", "trace"):
            return ()
        if shape == "gradient" and node.args and isinstance(node.args[0], ast.Name):
            return self.infer(node.args[0])
        if shape == "outer" and len(args) == 2 and args[0] and args[1]:
            return (args[0][-1], args[1][-1])
        if shape == "attention" and len(args) >= 3:     # the values' width (of the first stream)
            values = node.args[2]
            values = values.items[0] if isinstance(values, ast.Tuple) and values.items else values
            return self._split_inline(values, self.infer(values))
        return None

    def _apply_memory(self, node: ast.Call, arg):
        shape = self.memories.get(node.func) or self.states[node.func].decl.shape
        if isinstance(shape, ast.MLPShape):
            expects, gives = self.dim(shape.widths[0]), self.dim(shape.widths[-1])
        elif isinstance(shape, ast.TensorShape) and len(shape.dims) == 2:
            expects, gives = self.dim(shape.dims[1]), self.dim(shape.dims[0])
        else:
            return None
        # an input written inline in a per-head level (`M(x @ Wk)`) is split like a context
        if arg and expects and arg[-1] != expects and self._split_heads(arg)[-1] != expects:
            self.c.report(node, f"shape mismatch: memory {node.func!r} takes inputs of width "
                          f"[{expects.text}] but `{format_expr(node.args[0])}` has width "
                          f"[{arg[-1].text}]", expected=f"an input of width [{expects.text}]",
                          hint="check the key/query projection's output width")
        return (gives,) if gives else None

    heads_dim: Dim | None = None

    def _split_heads(self, shape):
        """Inside a level with `heads H`, a context of width H * d is H heads of width d."""
        if not shape or self.heads_dim is None:
            return shape
        if not all(_positive_int(h) for h in self.heads_dim.values):
            return shape    # `heads 0`, `heads 2.5`: check_frequencies reports the clause
        split = tuple(d / h for d, h in zip(shape[-1].values, self.heads_dim.values))
        if any(v != int(v) for v in split):
            return shape
        values = tuple(int(v) for v in split)
        return shape[:-1] + (self.named(values, f"({shape[-1].text}) / {self.heads_dim.text}"),)

    def _merge_heads(self, shape):
        """A per-head read of width d is seen outside its level as width H * d."""
        if not shape or self.heads_dim is None:
            return shape
        merged = tuple(d * h for d, h in zip(shape[-1].values, self.heads_dim.values))
        return shape[:-1] + (self.named(merged, f"{self.heads_dim.text} * {shape[-1].text}"),)

    per_head: frozenset = frozenset()
    context_heads: dict = {}        # a context of a `heads H` level -> H (as a Dim)

    def _split_inline(self, expr, shape):
        """An attention argument written inline in a per-head level (`y @ Wv` with y from
        another level) is split like a context; one that names this level's contexts, reads
        or states is per head already."""
        names = {n.id for n in names_in(expr)} | {c.func for c in _calls(expr)}
        return shape if names & self.per_head else self._split_heads(shape)

    def in_level(self, level) -> None:
        """Infer as inside `level`: one head of a `heads H` level, its contexts, reads and
        states per head (`run`; check_channel_gates for a rule's arguments). `leave` ends it."""
        self.heads_dim = self.dim(level.heads) if level.heads is not None else None
        self.per_head = frozenset(level.contexts) | frozenset(level.reads) | \
            frozenset(level.states)

    def leave(self) -> None:
        self.heads_dim, self.per_head = None, frozenset()

    def run(self) -> None:
        for level in self.c.graph.levels.values():
            self.in_level(level)
            per_head = set(level.states)
            for name, context in level.contexts.items():
                inferred = self.infer(context.value)
                self.shapes[name] = self._split_heads(inferred)
                if self.heads_dim is not None:
                    self.context_heads = {**self.context_heads, name: self.heads_dim}
                    if self.shapes[name] != inferred or self._per_head(context.value, per_head):
                        per_head.add(name)
            for objective in level.objectives:
                self.infer(objective.loss)
            for update in level.updates:
                self.infer(update.value)
            for name, read in level.reads.items():
                self.shapes[name] = self._merge_heads(self.infer(read.value))
                if self.heads_dim is None or self._per_head(read.value, per_head):
                    per_head.add(name)
                elif any(h != 1 for h in self.heads_dim.values):
                    self._unsplit_read(name, read, level)
        self.leave()
        if self.c.graph.output is not None:
            self.infer(self.c.graph.output)

    def _per_head(self, expr, per_head: set) -> bool:
        """Whether a value of a `heads H` level is one per head in this checker's model (which
        sees every read merged, width H * d): it names one of the level's states or of its
        contexts and reads built from them (`per_head`), or a context or attention argument
        whose width splits (heads.py's Frame rules, at the symbolic widths)."""
        if ({n.id for n in names_in(expr)} | {c.func for c in _calls(expr)}) & per_head:
            return True
        for call in _calls(expr):
            if FUNCTIONS.get(call.func) is None or FUNCTIONS[call.func].shape != "attention":
                continue
            for arg in call.args[:3]:
                for item in arg.items if isinstance(arg, ast.Tuple) else [arg]:
                    shape = self.infer(item)
                    if shape and self._split_inline(item, shape) != shape:
                        return True
        return False

    def _unsplit_read(self, name: str, read, level) -> None:
        """A read the same for every head leaves its level unmerged, width d at run time, while
        every other use of the level's reads takes width H * d (a raw shape error, or a
        silent difference, where the two met)."""
        self.c.report(read.value, f"read {name!r} of level {level.name!r} (heads "
                      f"{self.heads_dim.text}) is the same for every head: nothing in "
                      f"`{format_expr(read.value)}` is split by the heads",
                      expected="a read of the level's states, or of contexts or attention "
                      "arguments of width heads * d",
                      hint=f"project to heads * d (x @ W with W : [dim, heads * d]) or drop "
                      f"`heads {self.heads_dim.text}`")
        if self.c.graph.output is not None:
            self.infer(self.c.graph.output)


def check_shapes(c: Checker) -> None:
    for node, message in dim_problems(c.decl, hparam_values(c.decl)):
        c.report(node, message, expected="an integer >= 1", hint=DIM_HINT)
    shape_checker(c)


def shape_checker(c: Checker) -> ShapeChecker:
    """The spec's ShapeChecker, run once per Checker (reporting its problems then): check_shapes
    runs it, and check_memories reads the widths it inferred for the contexts."""
    if c.shape_checker is None:
        c.shape_checker = ShapeChecker(c)
        c.shape_checker.run()
    return c.shape_checker


DIM_HINT = ("a tensor cannot have an empty, negative or fractional dimension: fix the shape or "
            "the hyper-parameters it uses")


def _positive_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def declared_states(decl: ast.SpecDecl) -> list[ast.State]:
    """Every state the spec declares, outside levels and inside them."""
    items = decl.items + [item for level in decl.levels for item in level.items]
    return [item for item in items if isinstance(item, ast.State)]


def dim_problems(decl: ast.SpecDecl, env: dict, names: set[str] | None = None) -> list[tuple]:
    """(node, message) for each state dim or MLP width that `env` makes something other than a
    positive integer (`[0]`, `[-3, 2]`, `[2.5]`, `mlp(d -> 0 -> d)`); with `names`, only the dims
    that mention one of them (the values a caller passed)."""
    found = []
    for state in declared_states(decl):
        shape = state.shape
        what = "width" if isinstance(shape, ast.MLPShape) else "dimension"
        for expr in getattr(shape, "dims", []) + getattr(shape, "widths", []):
            if names is not None and not names & {n.id for n in names_in(expr)}:
                continue
            value = try_evaluate(expr, env)
            if value is not None and not _positive_int(value):
                found.append((expr, f"{what} `{format_expr(expr)}` of state {state.name!r} must "
                                    f"be a positive integer, got {value!r}"))
    return found


def infer_shapes(graph: LevelGraph) -> dict[str, tuple[str, ...] | None]:
    """The trailing feature dims of every context and read, as text (None when the spec does
    not determine them). A per-head context has its per-head width; a read its merged width."""
    checker = ShapeChecker(Checker(graph, Source("")))
    checker.run()
    return {name: None if shape is None else tuple(d.text for d in shape)
            for name, shape in checker.shapes.items()}
