"""Hypothesis strategies for property-testing nldsl, reusable in users' own test suites.

`exprs()` draws expressions and `specs()` whole `ast.SpecDecl`s that follow the grammar:
every node shape the parser can build, with names that avoid the language's keywords, numbers
the lexer can read back (non-negative; a minus sign is a `Unary`), and sizes kept small so a
property runs in milliseconds. They are grammatical, not meaningful: a drawn spec parses but
need not validate (it may use undefined names). Typical use::

    from hypothesis import given
    from nldsl.testing import specs
    from nldsl.parser import parse
    from nldsl.printer import format_spec

    @given(specs())
    def test_round_trip(decl):
        assert parse(format_spec(decl)) == decl

The property checks users point at their own specs (`check_derivations`, `check_schedules`,
`check_twin`, `check_invariants`, `check_equivalent`) and the spec-aware strategies
(`hparams(spec)`, `tensors_for(spec, level)`, `streams(spec)`) live in `nldsl.checking`
(docs/testing.md) and are importable from here too, on first use.

This module needs `hypothesis` (the `test` extra); nothing else in nldsl imports it.
"""
from __future__ import annotations

import re
import signal
import string
from contextlib import contextmanager
from functools import lru_cache

from hypothesis import strategies as st

from nldsl import ast
from nldsl.parser import grammar_text

#: nldsl.checking's public names, re-exported (PEP 562: imported with torch on first use).
CHECKS = ("check_derivations", "check_schedules", "check_twin", "check_invariants",
          "check_equivalent", "CheckFailure", "Report", "hparams", "tensors_for", "streams")


def __getattr__(name: str):
    if name in CHECKS:
        import nldsl.checking
        return getattr(nldsl.checking, name)
    raise AttributeError(f"module 'nldsl.testing' has no attribute {name!r}")

_COMPARISONS = ["<", "<=", ">", ">=", "==", "!="]
_BINARY_OPS = ["+", "-", "*", "/", "@", "**", "and", "or"] + _COMPARISONS


class Hang(Exception):
    """An example that did not finish within `hang_guard`'s time."""


@contextmanager
def hang_guard(seconds: int):
    """Turn an input that never finishes into a test failure instead of a stuck suite
    (hypothesis' deadline only judges inputs that do finish). SIGALRM: main thread, POSIX."""
    def on_alarm(signum, frame):
        raise Hang(f"no answer after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def assert_located(err) -> None:
    """An NLDSLError raised for spec text names `<string>:line:col` and has that position."""
    assert err.line >= 1 and err.column >= 1, str(err)
    assert f"<string>:{err.line}:{err.column}: error:" in str(err), str(err)


@lru_cache(maxsize=1)
def keywords() -> frozenset[str]:
    """Every word the grammar spells literally (`level`, `minimize`, `if`, ...): never a name."""
    return frozenset(re.findall(r'"([A-Za-z_][A-Za-z0-9_]*)"', grammar_text()))


def names() -> st.SearchStrategy[str]:
    """Short identifiers such as `k`, `W_2`, `eta`, never a keyword."""
    first = st.sampled_from(string.ascii_letters + "_")
    rest = st.text(string.ascii_letters + string.digits + "_", max_size=5)
    return st.builds(str.__add__, first, rest).filter(lambda n: n not in keywords())


def numbers() -> st.SearchStrategy[ast.Number]:
    """Non-negative ints and finite floats (floats of every magnitude, so `repr` is exercised)."""
    ints = st.integers(min_value=0, max_value=10**12)
    floats = st.floats(min_value=0, allow_nan=False, allow_infinity=False).map(abs)
    return st.builds(ast.Number, value=st.one_of(ints, floats))


def _leaves() -> st.SearchStrategy[ast.Expr]:
    return st.one_of(
        numbers(),
        st.builds(ast.Name, id=names()),
        st.builds(ast.Bool, value=st.booleans()),
        # The grammar's strings have no escapes: anything but a double quote or a newline.
        st.builds(ast.String, value=st.text(st.characters(blacklist_characters='"\n\r',
                                                          blacklist_categories=("Cs",)),
                                            max_size=6)),
    )


def _compound(children: st.SearchStrategy[ast.Expr]) -> st.SearchStrategy[ast.Expr]:
    keyword_args = st.lists(st.builds(ast.Keyword, name=names(), value=children), max_size=2)
    return st.one_of(
        st.builds(ast.Unary, op=st.sampled_from(["-", "not"]), operand=children),
        st.builds(ast.Binary, op=st.sampled_from(_BINARY_OPS), left=children, right=children),
        st.builds(ast.Conditional, cond=children, then=children, otherwise=children),
        st.builds(ast.Call, func=names(), args=st.lists(children, max_size=3), kwargs=keyword_args),
        st.builds(ast.Index, value=children, index=children),
        st.builds(ast.Tuple, items=st.lists(children, min_size=1, max_size=3)),
    )


def exprs(max_leaves: int = 8) -> st.SearchStrategy[ast.Expr]:
    """Any expression the grammar allows, nested arbitrarily, with at most ~`max_leaves` leaves."""
    return st.recursive(_leaves(), _compound, max_leaves=max_leaves)


def _small_exprs() -> st.SearchStrategy[ast.Expr]:
    return exprs(max_leaves=4)


def constraints() -> st.SearchStrategy[ast.Constraint]:
    return st.one_of(
        st.builds(ast.Bound, op=st.sampled_from(_COMPARISONS), value=_small_exprs()),
        st.builds(ast.Interval, low=_small_exprs(), high=_small_exprs(),
                  low_closed=st.booleans(), high_closed=st.booleans()),
        st.builds(ast.Choice, options=st.lists(_small_exprs(), min_size=1, max_size=3)),
    )


def hparam_decls() -> st.SearchStrategy[ast.HParam]:
    """`name [: type] [= default] constraint*`."""
    return st.builds(
        ast.HParam, name=names(),
        type=st.one_of(st.none(), st.sampled_from(["int", "float", "bool", "str"])),
        default=st.one_of(st.none(), _small_exprs()),
        constraints=st.lists(constraints(), max_size=2),
    )


def shapes() -> st.SearchStrategy[ast.Shape]:
    """Every shape kind: `like W`, `[d, d]`, `scalar`, `mlp(d -> 4 * d -> d, gelu, residual)`."""
    return st.one_of(
        st.builds(ast.LikeShape, name=names()),
        st.builds(ast.TensorShape, dims=st.lists(_small_exprs(), min_size=1, max_size=3)),
        st.builds(ast.ScalarShape),
        st.builds(ast.MLPShape, widths=st.lists(_small_exprs(), min_size=2, max_size=4),
                  options=st.lists(names(), max_size=2)),
    )


def states() -> st.SearchStrategy[ast.State]:
    inits = st.one_of(
        st.none(),
        st.builds(ast.InitValue, value=_small_exprs()),
        st.builds(ast.InitLearned, by=st.one_of(st.none(), names())),
    )
    return st.builds(ast.State, name=names(), shape=shapes(), init=inits)


def rules() -> st.SearchStrategy[ast.Rule]:
    """A learning rule, bare (`sign`) or called (`momentum(0.1, beta = 0.9)`)."""
    kwargs = st.lists(st.builds(ast.Keyword, name=names(), value=_small_exprs()), max_size=2)
    return st.builds(ast.Rule, name=names(), args=st.lists(_small_exprs(), max_size=2),
                     kwargs=kwargs)


def level_items() -> st.SearchStrategy[ast.LevelItem]:
    """A state, a context definition, an objective with a rule chain, an update or a read."""
    roles = st.sampled_from(["key", "value", "query", "gate", "let"])
    return st.one_of(
        states(),
        st.builds(ast.Context, role=roles, name=names(), value=exprs()),
        st.builds(ast.Objective, state=st.one_of(st.none(), names()), loss=exprs(),
                  rules=st.lists(rules(), min_size=1, max_size=3)),
        st.builds(ast.Update, target=names(), value=exprs()),
        st.builds(ast.Read, name=names(), value=exprs(), before_write=st.booleans()),
    )


def levels() -> st.SearchStrategy[ast.Level]:
    """`level NAME every N unit [chunk C] [heads H] [backprop] [partial flush|drop] { ... }`."""
    optional = st.one_of(st.none(), _small_exprs())
    return st.builds(
        ast.Level, name=names(), every=_small_exprs(), unit=st.sampled_from(["step", "token"]),
        chunk=optional, heads=optional, backprop=st.booleans(),
        partial=st.one_of(st.none(), st.sampled_from(["flush", "drop"])),
        items=st.lists(level_items(), max_size=4),
    )


def spec_items() -> st.SearchStrategy[ast.SpecItem]:
    """What may sit at the top of a spec: levels, the outer level's items, and `out = ...`."""
    outer_items = level_items().filter(lambda item: not isinstance(item, ast.Read))
    return st.one_of(levels(), outer_items, st.builds(ast.Output, value=exprs()))


def specs() -> st.SearchStrategy[ast.SpecDecl]:
    """A whole grammatical spec: an optimizer or module with hyper-parameters and items."""
    return st.builds(
        ast.SpecDecl, kind=st.sampled_from(["optimizer", "module"]), name=names(),
        hparams=st.lists(hparam_decls(), max_size=4), items=st.lists(spec_items(), max_size=4),
    )


# ---------------------------------------------------------------- spec text and its corruptions

#: Hand-written specs that use most of the grammar; seeds for fuzzing when no file is at hand.
EXAMPLE_SPECS: dict[str, str] = {
    "heavy_ball": """\
# Heavy-ball momentum as two levels: a momentum memory compresses the gradients (eq. 28).
optimizer heavy_ball(lr = 0.01 > 0, beta = 0.9 in [0, 1), weight_decay = 0 >= 0) {
  level momentum every 1 step {
    key g = grad(W) + weight_decay * W
    state m like W = 0
    m: minimize -dot(m, g) by ema(beta)
  }
  level weights every 1 step {
    W <- W - lr * m
  }
}
""",
    "delta_memory": """\
# A per-head delta-rule memory trained in chunks, read with l2-normalised queries.
module delta_memory(dim: int >= 1, heads: int = 2 >= 1, head_dim: int = 8 >= 1,
                    chunk: int = 4 >= 1, lr = 0.5 in (0, 1], mode: str = "flush" in {"flush", "drop"}) {
  state Wk : [dim, head_dim]
  state Wv : [dim, head_dim]
  state Wq : [dim, head_dim]
  level memory every 1 token chunk chunk heads heads partial flush {
    state M : [head_dim, head_dim] = 0
    key k = l2norm(x @ Wk)
    value v = x @ Wv
    query q = l2norm(x @ Wq)
    gate eta = lr * sigmoid(sum(x)) if t > 1 else lr
    minimize l2(M(k), v) by gd(lr = eta, decay = 1)
    read y = M(q)
  }
  out = y
}
""",
}

_TOKEN = re.compile(r'\s+|#[^\n]*|"[^"\n]*"|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[A-Za-z_]\w*'
                    r'|<-|->|\*\*|[<>=!]=|\S')


def tokenize(text: str) -> list[str]:
    """Words, numbers, strings, comments, operators and the whitespace between them: joining
    the tokens gives back `text` exactly."""
    return _TOKEN.findall(text)


@st.composite
def corrupted_texts(draw, text: str, max_edits: int = 3) -> str:
    """`text` after 1..`max_edits` random edits: a token deleted, duplicated or swapped with
    another, or the text cut at any character (so strings and numbers may be cut in half)."""
    tokens = tokenize(text)
    for _ in range(draw(st.integers(1, max_edits))):
        words = [i for i, token in enumerate(tokens) if not token.isspace()]
        edit = draw(st.sampled_from(["delete", "duplicate", "swap", "truncate"]))
        if edit == "truncate" or not words:
            joined = "".join(tokens)
            tokens = tokenize(joined[: draw(st.integers(0, len(joined)))])
            continue
        i = draw(st.sampled_from(words))
        if edit == "delete":
            del tokens[i]
        elif edit == "duplicate":
            tokens[i:i] = [tokens[i], " "]
        else:
            j = draw(st.sampled_from(words))
            tokens[i], tokens[j] = tokens[j], tokens[i]
    return "".join(tokens)


# ---------------------------------------------------------------- rounding-error bounds for checks

#: Unit roundoff (half an ulp at 1) of each precision the kernels compute in.
UNIT_ROUNDOFF = {"float64": 2.0 ** -53, "float32": 2.0 ** -24, "bfloat16": 2.0 ** -8}


def _polynomial(polynomial) -> tuple[float, float, float]:
    if polynomial == "quintic":
        return (3.4445, -4.7750, 2.0315)
    if polynomial == "cubic":
        return (1.5, -0.5, 0.0)
    return tuple(float(v) for v in polynomial)


def newton_schulz_error_bound(shape, steps: int = 5, polynomial="quintic",
                              precision: str = "float32") -> float:
    """A first-order worst-case bound on ||NS(x) - NS_exact(x)||_F, the Frobenius distance of
    `kernels.newton_schulz(x, steps, polynomial, precision=precision)` (any summation order:
    per matrix or batched) from the same iteration in exact arithmetic, for x of `shape`.
    Pure Python; no torch.

    Derivation. On the wide orientation X is [m, n], m <= n. One step X <- a X + (b A + c A^2) X,
    A = X X^T, rounds each entry through three products with inner dimensions n, m and m and
    four scalings/additions: at most n + 2m + 4 roundings of relative size u, each on a term no
    larger than (|a| + |b| + |c|) times the step's scale; the start X / ||X||_F adds 2 more. The
    singular values stay in [0, s], the smallest interval containing [0, 1] that
    p(sigma) = a sigma + b sigma^3 + c sigma^5 maps into itself, so ||X||_F <= s sqrt(m). An error
    made at one step reaches the result through the polynomial's derivative: at most
    L = max |p'(sigma)| on [0, s] per later step (Muon's quintic: s = 1.2025, L = 3.97). So

        bound = u ((n + 2m + 4) (|a| + |b| + |c|) + 2) (sum_{j < steps} L^j) s sqrt(m)

    (quintic, 5 steps, 6x6, float32: 1.3e-2, against measured errors of 1e-6 to 3e-6, 10-40 u:
    the bound is worst case, and an error in the code, such as a wrong coefficient, transpose
    or step count, is of order 1). It drops products of two roundings (first order), and in
    bfloat16 it exceeds the result's own size, so it says nothing there.
    """
    a, b, c = _polynomial(polynomial)
    p = lambda s: a * s + b * s ** 3 + c * s ** 5
    dp = lambda s: a + 3 * b * s ** 2 + 5 * c * s ** 4
    top = 1.0
    for _ in range(50):                                    # grow [0, top] until p maps it into itself
        highest = max(abs(p(top * i / 4000)) for i in range(4001))
        if highest <= top:
            break
        top = highest
    slope = max(abs(dp(top * i / 4000)) for i in range(4001))
    m, n = sorted(shape)
    per_step = (n + 2 * m + 4) * (abs(a) + abs(b) + abs(c)) + 2
    growth = sum(slope ** j for j in range(int(steps)))
    return UNIT_ROUNDOFF[precision] * per_step * growth * top * m ** 0.5


# ---------------------------------------------------------------- valid-looking optimizer specs

#: Names that collide with Python or with the generated code's own names (issue 8, §5), beside
#: ordinary ones. Grammar keywords are left out (they are not names), `int` & co. are not.
FUZZ_NAMES = ("int", "float", "zip", "any", "len", "range", "x", "st", "c", "writing", "spec",
              "schedule", "lambda", "class", "None", "self", "torch", "math", "kernels", "group",
              "p", "g", "m", "v", "k", "lr", "beta", "eps", "__debug__", "W_2", "_h", "sum_")

#: Built-ins (nldsl.builtins.FUNCTIONS) by how an optimizer expression can call them on
#: W-shaped tensors [r, c]; `optimizer_specs` asserts it covers the table.
ELEMENTWISE = ("sqrt", "exp", "log", "abs", "sign", "tanh", "sigmoid", "softplus", "relu", "gelu",
               "silu", "softmax", "l2norm", "rmsnorm", "layernorm", "stopgrad")
LAST_DIM_REDUCTIONS = ("norm", "sum", "mean")                      # [r, 1], broadcasts with [r, c]
MODULE_ONLY = ("conv", "attention", "window_attention", "concat", "wsum")
INITIALISERS = ("zeros", "ones", "eye", "normal", "uniform")


def fuzz_names() -> st.SearchStrategy[str]:
    """A user name: one of FUZZ_NAMES, or a short identifier (never a grammar keyword)."""
    return st.one_of(st.sampled_from(FUZZ_NAMES), names().filter(lambda n: len(n) <= 3))


#: Constructs `optimizer_specs(exclude=...)` can leave out, each a family the fuzzer finds broken.
CONSTRUCTS = frozenset({"python-names", "rule-chains", "tensor-conditionals", "clamp-stopgrad",
                        "odd"})


@st.composite
def optimizer_specs(draw, max_levels: int = 3, exclude: frozenset = frozenset()) -> str:
    """The text of an optimizer spec drawn from the vocabulary tables (nldsl.builtins FUNCTIONS
    and RULES): hyper-parameters of every type (float, int, bool, str choice, tuple), levels
    `every N steps` with keys/lets (also used before they are defined), states `like W` (initial
    values 0, W, grad(W), an expression, another state, themselves, or an initialiser) and MLP
    states, objectives `minimize ... by` every rule with positional and keyword arguments and
    `then` chains, explicit updates, reads (also `before write`), every built-in (also the
    module-only ones, the objectives used as values and `grad` of a non-parameter, which
    nldsl must reject with a located error), conditionals on bools, strings, `step`, shapes
    and tensors (`not` included), and names from FUZZ_NAMES. Mostly shape-correct for matrix
    parameters, never guaranteed valid: the property is "runs alike in both schedules, or
    fails with a located NLDSLError".

    `exclude` leaves out constructs (CONSTRUCTS): "python-names" (FUZZ_NAMES: only short
    generated names), "rule-chains" (`then`), "tensor-conditionals" (`a if tensor > x else b`,
    `not tensor`), "clamp-stopgrad", "odd" (module-only built-ins, `grad` of a non-parameter,
    initialisers and out-of-range numbers inside expressions, built-ins on numbers)."""
    unknown = set(exclude) - CONSTRUCTS
    if unknown:
        raise ValueError(f"unknown constructs {sorted(unknown)}; known: {sorted(CONSTRUCTS)}")
    pool = names().filter(lambda n: len(n) <= 3) if "python-names" in exclude else fuzz_names()
    elementwise = tuple(f for f in ELEMENTWISE if f != "stopgrad" or "clamp-stopgrad" not in exclude)
    from nldsl.builtins import FUNCTIONS, RULES

    used: set[str] = {"W", "step"}

    def fresh() -> str:
        name = draw(pool.filter(lambda n: n not in used and n not in FUNCTIONS
                                        and n not in RULES and n != "task"))
        used.add(name)
        return name

    # hyper-parameters
    lr = fresh()
    hp_lines = [f"{lr} = {draw(st.sampled_from(['0.01', '1e-3', '0.1']))} > 0"]
    floats, bools, strs, ints, tuples = [lr], [], [], [], []
    for _ in range(draw(st.integers(0, 3))):
        kind, name = draw(st.sampled_from(["float", "bool", "str", "int", "tuple"])), fresh()
        if kind == "float":
            hp_lines.append(f"{name} = {draw(st.sampled_from(['0.5', '0.9', '2.0', '1e-8']))}"
                            + draw(st.sampled_from(["", " >= 0", " in [0, 10]"])))
            floats.append(name)
        elif kind == "bool":
            hp_lines.append(f"{name} = {draw(st.sampled_from(['true', 'false']))}")
            bools.append(name)
        elif kind == "str":
            hp_lines.append(f'{name} = "{draw(st.sampled_from(["a", "b"]))}" in {{"a", "b"}}')
            strs.append(name)
        elif kind == "int":
            hp_lines.append(f"{name}: int = {draw(st.integers(1, 3))} >= 1")
            ints.append(name)
        else:
            hp_lines.append(f"{name} = (0.9, 0.99) in [0, 1]")
            tuples.append(name)

    def scalar() -> str:
        options = [draw(st.sampled_from(["0", "1", "0.5", "2", "0.001", "3.5", "1e-3"]))]
        options += floats + [f"{t}[{draw(st.integers(0, 1))}]" for t in tuples]
        options += ["step", "size(W, 0)", "size(W, -1)", "ndim(W)"] + ints
        return draw(st.sampled_from(options))

    def condition(tensors, depth) -> str:
        options = ["step > 1", "step == 2", "ndim(W) == 2", "size(W, 0) >= size(W, 1)"]
        options += bools + [f'{s} == "a"' for s in strs] + [f"{s} != \"b\"" for s in strs]
        extra = ["and"] if "tensor-conditionals" in exclude else ["tensor", "not", "and"]
        choice = draw(st.sampled_from(options + extra))
        if choice == "tensor":
            return f"{expr(tensors, depth - 1)} > {scalar()}"
        if choice == "not":
            return f"not ({condition(tensors, depth - 1)})"
        if choice == "and":
            return f"{condition(tensors, depth - 1)} and {condition(tensors, depth - 1)}"
        return choice

    def expr(tensors, depth=2) -> str:
        """A W-shaped tensor (mostly)."""
        leaves = ["W", "grad(W)"] + tensors
        if depth <= 0:
            return draw(st.sampled_from(leaves))
        kinds = ["leaf", "leaf", "unary", "binary", "binary", "scaled", "maxmin", "clamp", "if",
                 "ns", "reduce", "matmul", "scalar_of", "neg", "odd"]
        kind = draw(st.sampled_from([k for k in kinds if k not in exclude
                                     and not (k == "clamp" and "clamp-stopgrad" in exclude)]))
        sub = lambda: expr(tensors, depth - 1)
        if kind == "leaf":
            return draw(st.sampled_from(leaves))
        if kind == "unary":
            return f"{draw(st.sampled_from(elementwise))}({sub()})"
        if kind == "binary":
            return f"({sub()} {draw(st.sampled_from(['+', '-', '*', '/']))} {sub()})"
        if kind == "scaled":
            return f"({scalar()} {draw(st.sampled_from(['*', '/', '+', '-', '**']))} {sub()})" \
                if draw(st.booleans()) else f"({sub()} ** {draw(st.sampled_from(['2', '0.5', '3']))})"
        if kind == "maxmin":
            return f"{draw(st.sampled_from(['max', 'min']))}({sub()}, {draw(st.sampled_from([scalar(), sub()]))})"
        if kind == "clamp":
            return f"clamp({sub()}, {draw(st.sampled_from(['0 - 1', '0', '-0.5']))}, {draw(st.sampled_from(['1', '2']))})"
        if kind == "if":
            return f"({sub()} if {condition(tensors, depth)} else {sub()})"
        if kind == "ns":
            args = [sub()]
            positional = draw(st.integers(0, 4))
            values = [str(draw(st.integers(1, 5))), draw(st.sampled_from(['"cubic"', '"quintic"',
                      "(3.4445, -4.7750, 2.0315)"])), draw(st.sampled_from(["1e-7", "1000.0"])),
                      draw(st.sampled_from(['"float32"', '"bfloat16"', '"float64"']))]
            keys = ["steps", "polynomial", "eps", "precision"]
            args += values[:positional]
            args += [f"{k} = {v}" for k, v in zip(keys[positional:], values[positional:])
                     if draw(st.booleans())]
            return f"newton_schulz({', '.join(args)})"
        if kind == "reduce":
            return f"({sub()} - {draw(st.sampled_from(LAST_DIM_REDUCTIONS))}({sub()}))"
        if kind == "matmul":
            return draw(st.sampled_from([f"(outer({sub()}, {sub()}) @ {sub()})",
                                         f"({sub()} @ transpose({sub()}) @ {sub()})",
                                         f"transpose(transpose({sub()}))"]))
        if kind == "scalar_of":                            # a number times a tensor
            return draw(st.sampled_from([
                f"trace({sub()} @ transpose({sub()})) * {sub()}",
                f"dot({sub()}, {sub()}) * {sub()}", f"l2({sub()}, {sub()}) * {sub()}",
                f"lp({sub()}, {sub()}, 3) * {sub()}", f"huber({sub()}, {sub()}, 1.0) * {sub()}",
                f"orthogonality({sub()}) * {sub()}"]))
        if kind == "neg":
            return f"-{sub()}" if draw(st.booleans()) else f"(0 - {sub()})"
        # odd: what nldsl must reject with a located error, or run alike
        return draw(st.sampled_from([
            f"grad({draw(st.sampled_from(tensors + [lr, '3', 'W * 2', 'step']))})",
            f"conv({sub()}, 2)", f"attention({sub()}, {sub()}, {sub()})",
            f"window_attention({sub()}, {sub()}, {sub()}, 2)", f"concat({sub()}, {sub()})",
            f"wsum((0.5, 0.5), {sub()}, {sub()})", f"{draw(st.sampled_from(INITIALISERS))}()",
            f"{draw(st.sampled_from(['1e400', '10 ** 1000', '1e-400']))} * {sub()}",
            f"{draw(st.sampled_from(ELEMENTWISE[:11]))}({scalar()}) * {sub()}",
            f"(not {sub()}) * {sub()}", f"({sub()} if {sub()} > 0 else 0 - {sub()})",
        ]))

    # levels: declare names first so expressions can refer to states and reads anywhere
    count = draw(st.integers(1, max_levels))
    plans = []
    for _ in range(count):
        plans.append(dict(name=fresh(), every=draw(st.sampled_from(["1", "1", "2"] + ints)),
                          states=[fresh() for _ in range(draw(st.integers(0, 2)))],
                          mlp=fresh() if draw(st.integers(0, 5)) == 0 else None,
                          contexts=[fresh() for _ in range(draw(st.integers(0, 2)))],
                          reads=[fresh() for _ in range(draw(st.integers(0, 1)))]))
    states = [s for plan in plans for s in plan["states"]]
    reads = [r for plan in plans for r in plan["reads"]]

    def rule_call(state_tensors) -> str:
        name = draw(st.sampled_from(sorted(RULES)))
        spec = RULES[name]
        values = {"lr": draw(st.sampled_from([lr, "0.1", f"1 - {draw(st.sampled_from(floats))}"])),
                  "decay": draw(st.sampled_from(["1", "0.9", "0"])),
                  "normalized": draw(st.sampled_from(["true", "false"])),
                  "beta": draw(st.sampled_from(["0.9", "0.5"] + [f"{t}[0]" for t in tuples])),
                  "steps": str(draw(st.integers(1, 5))),
                  "polynomial": draw(st.sampled_from(['"cubic"', '"quintic"'])),
                  "eps": draw(st.sampled_from(["1e-7", "0.5"])),
                  "precision": draw(st.sampled_from(['"float32"', '"float64"', '"bfloat16"']))}
        required = [p for p in spec.params if p not in spec.defaults]
        optional = [p for p in spec.params if p in spec.defaults and draw(st.booleans())]
        positional = draw(st.integers(0, len(required)))
        args = [values[p] for p in required[:positional]]
        args += [f"{p} = {values[p]}" for p in required[positional:] + optional]
        if not args and draw(st.booleans()):
            return name
        return f"{name}({', '.join(args)})"

    def objective(state, tensors) -> str:
        e = lambda: expr(tensors, 1)
        loss = draw(st.sampled_from([
            f"-dot({state}, {e()})", f"dot({state}, {e()})", f"l2({state}, {e()})",
            f"l2({state} @ {draw(st.sampled_from(tensors))}, 0)",
            f"orthogonality({state})", f"lp({state}, {e()}, 3)", f"huber({state}, {e()}, 1.0)",
            f"l2({state}, {e()}) + 0.5 * orthogonality({state})",
            f"window(step, l2({state} * {e()}, {e()}), 0.9) + 0.1 * l2({state}, 0)",
            f"window(1, l2({state}, {e()}), 1)",
            f"-dot({state}, {e()}) if {condition(tensors, 1)} else l2({state}, 0)",
        ]))
        links = 1 if "rule-chains" in exclude else draw(st.integers(1, 2))
        chain = [rule_call(tensors) for _ in range(links)]
        return f"{state}: minimize {loss} by {' then '.join(chain)}"

    lines = []
    for plan in plans:
        body = []
        visible = states + reads + plan["contexts"]
        for name in plan["contexts"]:
            role = draw(st.sampled_from(["key", "value", "gate", "let", "let"]))
            body.append(f"{role} {name} = {expr([t for t in visible if t != name], 1)}")
        for name in plan["states"]:
            init = draw(st.sampled_from(["0", "0", "W", "grad(W)", "expr", "other", "self",
                                         "init", "none"]))
            if init == "expr":
                init = expr([], 1)
            elif init == "other":
                init = draw(st.sampled_from(states))
            elif init == "self":
                init = name
            elif init == "init":
                fn = draw(st.sampled_from(INITIALISERS))
                init = f"{fn}({'0.1' if fn in ('normal', 'uniform') and draw(st.booleans()) else ''})"
            body.append(f"state {name} like W" + ("" if init == "none" else f" = {init}"))
            if draw(st.booleans()):
                body.append(objective(name, visible))
            else:
                body.append(f"{name} <- {expr(visible, 2)}")
        if plan["mlp"]:
            m = plan["mlp"]
            act = draw(st.sampled_from(["silu", "gelu", "relu", "tanh", "linear", "bogus"]))
            extra = ", residual" if draw(st.booleans()) else ""
            body.append(f"state {m} : mlp(size(W, -1) -> 2 * size(W, -1) -> size(W, -1), {act}{extra})")
            body.append(f"{m}: minimize {draw(st.sampled_from(['dot', 'l2']))}({m}(grad(W)), grad(W)) by "
                        f"gd({lr}, decay = 0.9)")
            body.append(f"read {plan['reads'][0] if plan['reads'] else fresh()} = {m}(grad(W))")
            reads_here = plan["reads"][1:]
        else:
            reads_here = plan["reads"]
        for name in reads_here:
            before = " before write" if draw(st.booleans()) else ""
            body.append(f"read {name} = {expr(visible, 1)}{before}")
        body = draw(st.permutations(body))
        lines.append(f"  level {plan['name']} every {plan['every']} steps {{")
        lines += [f"    {line}" for line in body] + ["  }"]
    update = draw(st.sampled_from([f"W - {lr} * {expr(states + reads, 2)}",
                                   f"W - {lr} * tanh({expr(states + reads, 2)})",
                                   expr(states + reads, 2)]))
    weights = [f"  level {fresh()} every 1 step {{", f"    W <- {update}", "  }"]
    lines = weights + lines if draw(st.booleans()) else lines + weights
    return (f"optimizer {fresh()}({', '.join(hp_lines)}) {{\n" + "\n".join(lines) + "\n}\n")


# ---------------------------------------------------------------- valid-looking module specs

#: How a drawn level writes its memory: derived (objective + rule) or explicit, by kind.
MODULE_UPDATES = ("hebbian", "delta", "dgd", "ema", "momentum", "autograd", "gated_delta",
                  "explicit_hebbian")


@st.composite
def module_specs(draw, max_levels: int = 2, min_head_dim: int = 1) -> str:
    """The text of a module spec from the linear family (docs/modules.md, "What compiles"):
    small `dim`, `heads`, `head_dim`; per level a matrix memory `[head_dim, head_dim]` (or a
    vector `[head_dim]`, written elementwise), keys, values and queries projected from `x`
    (l2-normalised or not, through `silu` or a `conv`), gates `sigmoid(x @ W)` (one per head,
    or channel-wise), constants or hyper-parameters, and a write that is derived (`-dot` or
    `l2` objectives by gd, dgd, ema or momentum; an objective outside the derivation table) or
    explicit (Gated DeltaNet's update, a Hebbian sum); `every N tokens`, `chunk C`,
    `heads heads`, `backprop`, `partial flush|drop`; reads `M(q)`, normalised or gated, also
    `before write`; `out` the sum of the levels' projected reads.

    Mostly valid, never guaranteed: the property is "compiles and runs alike in both
    schedules, or fails with a located NLDSLError". Keys of erasing rules (delta, dgd, Gated
    DeltaNet) are l2-normalised and their rates sigmoid gates or constants in (0, 1], so every
    transition a (I - c k k^T) has norm <= 1: rounding is not amplified along the stream, which
    is what lets a comparison of the schedules use a tolerance derived from the arithmetic
    (tests/test_fuzz_module.py). `min_head_dim` > 1 leaves out head_dim = 1, where the head
    width heads * head_dim equals the gate width heads."""
    dim, heads = draw(st.integers(2, 5)), draw(st.integers(1, 3))
    head_dim = draw(st.integers(min_head_dim, 4))
    hparams = [f"dim: int = {dim} >= 1", f"heads: int = {heads} >= 1",
               f"head_dim: int = {head_dim} >= 1", "lr = 0.5 in (0, 1]", "decay = 0.9 in [0, 1]"]
    params, levels, outs = [], [], []
    for i in range(draw(st.integers(1, max_levels))):
        per_head = draw(st.booleans())
        width = "heads * head_dim" if per_head else "head_dim"
        gate_width = "heads" if per_head else "1"
        vector = draw(st.integers(0, 4)) == 0
        update = draw(st.sampled_from(MODULE_UPDATES))
        erasing = update in ("delta", "dgd", "gated_delta", "momentum", "autograd")
        std = draw(st.sampled_from(["0.3", "0.5", "1.0"]))
        params += [f"state Wk{i} : [dim, {width}] = normal({std})",
                   f"state Wv{i} : [dim, {width}] = normal({std})",
                   f"state Wq{i} : [dim, {width}] = normal({std})",
                   f"state Wb{i} : [dim, {draw(st.sampled_from([gate_width, gate_width, width]))}] = normal(1.0)",
                   f"state Wa{i} : [dim, {gate_width}] = normal(1.0)",
                   f"state Wo{i} : [{width}, dim] = normal(0.5)"]
        keys = ["l2norm(x @ Wk{i})", "l2norm(silu(x @ Wk{i}))", "l2norm(conv(x @ Wk{i}, 2))"]
        if not erasing:
            keys += ["x @ Wk{i}", "silu(x @ Wk{i})"]
        key = draw(st.sampled_from(keys)).format(i=i)
        value = draw(st.sampled_from(["x @ Wv{i}", "silu(x @ Wv{i})", "conv(x @ Wv{i}, 3)"])).format(i=i)
        query = draw(st.sampled_from(["l2norm(x @ Wq{i})", "x @ Wq{i}"])).format(i=i)
        beta = draw(st.sampled_from(["sigmoid(x @ Wb{i})", "lr", "0.5", "lr * sigmoid(x @ Wb{i})"])).format(i=i)
        alpha = draw(st.sampled_from(["1", "decay", "sigmoid(x @ Wa{i})",
                                      "exp(-softplus(x @ Wa{i}))"])).format(i=i)
        m = f"M{i}"
        apply = f"{m} * k{i}" if vector else f"{m}(k{i})"
        body = [f"state {m} : [{'head_dim' if vector else 'head_dim, head_dim'}] = 0",
                f"key k{i} = {key}", f"value v{i} = {value}", f"query q{i} = {query}",
                f"gate beta{i} = {beta}", f"gate alpha{i} = {alpha}"]
        rules = {
            "hebbian": f"minimize -dot({apply}, v{i}) by gd(lr = beta{i}, decay = alpha{i})",
            "delta": f"minimize l2({apply}, v{i}) by gd(lr = beta{i}, decay = alpha{i})",
            "dgd": f"minimize l2({apply}, v{i}) by dgd(lr = beta{i}, decay = alpha{i}, "
                   f"normalized = {draw(st.sampled_from(['true', 'false']))})",
            "ema": f"minimize -dot({apply}, v{i}) by ema(alpha{i})",
            "momentum": f"minimize l2({apply}, v{i}) by momentum(lr = beta{i}, beta = 0.5, decay = alpha{i})",
            "autograd": f"minimize l2(tanh({apply}), v{i}) by gd(lr = beta{i}, decay = alpha{i})",
            "gated_delta": (f"{m} <- alpha{i} * {m} - beta{i} * " + (
                f"(alpha{i} * {apply} - v{i}) * k{i}" if vector else
                f"outer(alpha{i} * {apply} - v{i}, k{i})")),
            "explicit_hebbian": f"{m} <- alpha{i} * {m} + beta{i} * " + (
                f"v{i} * k{i}" if vector else f"outer(v{i}, k{i})"),
        }
        body.append(rules[update])
        body.append(f"gate g{i} = sigmoid(x @ Wv{i})")
        read = draw(st.sampled_from(["{a}", "rmsnorm({a})", "{a} * g{i}"]))
        read = read.format(a=f"{m} * q{i}" if vector else f"{m}(q{i})", i=i)
        before = " before write" if draw(st.booleans()) else ""
        body.append(f"read y{i} = {read}{before}")
        every = draw(st.sampled_from([1, 1, 1, 2, 3]))
        options = f"every {every} {'token' if every == 1 else 'tokens'}"
        chunk = draw(st.sampled_from([None, None, every, 2 * every, 4 * every]))
        options += f" chunk {chunk}" if chunk else ""
        options += " heads heads" if per_head else ""
        options += " backprop" if draw(st.booleans()) else ""
        partial = draw(st.sampled_from([None, "flush", "drop"]))
        options += f" partial {partial}" if partial else ""
        levels.append((-every, [f"level mem{i} {options} {{"] +
                       [f"  {line}" for line in draw(st.permutations(body))] + ["}"]))
        outs.append(f"y{i} @ Wo{i}")
    levels.sort(key=lambda level: level[0])                 # slower levels first
    lines = params + [line for _, level in levels for line in level] + [f"out = {' + '.join(outs)}"]
    return (f"module fuzzed({', '.join(hparams)}) {{\n" + "".join(f"  {line}\n" for line in lines)
            + "}\n")
