"""Hypothesis strategies for property-testing nldsl, reusable in users' own test suites.

`exprs()` draws expressions and `specs()` whole `ast.SpecDecl`s that follow the grammar:
every node shape the parser can build, with names that avoid the language's keywords, numbers
the lexer can read back (non-negative; a minus sign is a `Unary`), and sizes kept small so a
property runs in milliseconds. They are grammatical, not meaningful: a drawn spec parses but
need not validate (it may use undefined names). Typical use::

    from hypothesis import given
    from nldsl.testing import specs
    from nldsl.language.parser import parse
    from nldsl.language.printer import format_spec

    @given(specs())
    def test_round_trip(decl):
        assert parse(format_spec(decl)) == decl

The property checks users point at their own specs (`check_derivations`, `check_schedules`,
`check_twin`, `check_invariants`, `check_equivalent`) and the spec-aware strategies
(`hparams(spec)`, `tensors_for(spec, level)`, `streams(spec)`) live in `nldsl.checking`
(docs/testing.md) and are importable from here too, on first use. The differential fuzzers'
valid-looking specs (`optimizer_specs()`, `module_specs()`) are in `nldsl.fuzzing`.

This module needs `hypothesis` (the `test` extra); nothing else in nldsl imports it.
"""
from __future__ import annotations

import re
import signal
import string
from contextlib import contextmanager
from functools import lru_cache

from hypothesis import strategies as st

from nldsl.language import ast
from nldsl.language.parser import grammar_text

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


def loaded_or_refused(text: str):
    """`nldsl.load(text)`, or None where it is refused: then with a located NLDSLError (the
    differential fuzzers' first step)."""
    import nldsl

    try:
        return nldsl.load(text)
    except nldsl.NLDSLError as err:
        assert_located(err)
        return None


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
