"""`by solve`: the exact minimiser of an elementwise ridge regression over a window of units.

The objective class is eq. 101's (Appendix B, Adam as an associative memory), with nldsl's
l2(a, b) = 1/2 ||a - b||^2 and elementwise products:

    L(S) = w * window(c, l2(S * k, v), gamma) + lam * l2(S, 0)
         = w sum_{i in window} gamma_i 1/2 ||S * k_i - v_i||^2 + lam 1/2 ||S||^2          (101)

k_i, gamma_i (and v_i, when v is built from contexts) are unit i's; w, lam (and v, when v is a
state or a read: eq. 101's P_t, one value for every i) are the current unit's. L is a sum of
coordinate-wise parabolas, so dL/dS = w sum_i gamma_i (S k_i - v_i) k_i + lam S = 0 gives, per
coordinate (the 1/2 of l2 is on both terms, so eq. 101's unhalved norms have the same minimiser):

    S* = w A / (w B + lam),   A = sum_i gamma_i k_i v_i,   B = sum_i gamma_i k_i^2           (102)

the minimiser when gamma_i >= 0, lam >= 0 and w B + lam > 0; where w B + lam = 0 (no key ever
reached the coordinate and no ridge) L does not depend on S and S* = 0, its minimum-norm
minimiser (`divide_or_zero`). With a current v, A = sum_i gamma_i k_i and S* = w A v / (w B + lam):
eq. 102's m* = (H + lam I)^-1 M~ P. For c = `step` (the whole history, eq. 101's sum from 1 to t)
A and B are hidden persistent states, `_solve_S_num` and `_solve_S_den`, updated every unit
(A <- A + gamma k v, eq. 102's M~ and H recurrences); for c = 1 the sums are the current term.

One gamma weighs both sums alike, while eq. 102 writes M~ = sum beta1 g and H = sum beta2 g^2:
with gamma = beta2, B is eq. 102's H exactly and A = (beta2 / beta1) M~, so P absorbs beta1 / beta2
(docs/optimizers.md, "Adam's closed form"). Eq. 101 itself has no such weights.
"""
from __future__ import annotations

from dataclasses import dataclass

from nldsl.language import ast
from nldsl.language.consteval import children
from nldsl.errors import NLDSLCompileError, Problem, Source
from nldsl.lower.derive import binary, call, mentions, num
from nldsl.optim.ir import Write

WIDTHS = "`step` (the whole history, eq. 101) or 1 (the current unit)"
FORM = "w * window(c, l2(S * k, v), gamma) + lam * l2(S, 0)"


@dataclass(frozen=True)
class Regression:
    """The parsed objective: L(S) = weight * window(width, l2(S * key, value), gamma) + ridge * l2(S, 0)."""

    width: str                   # "step" or "1"
    key: ast.Expr
    value: ast.Expr
    gamma: ast.Expr
    weight: ast.Expr
    ridge: ast.Expr
    value_is_current: bool       # v is a state or a read: eq. 101's P_t, factored out of the sum


@dataclass(frozen=True)
class Names:
    """What the spec's names are: `current` (states, reads: their value now) and `contexts`
    (computed per unit, like `grad(...)`); anything else (hyper-parameters, `step`) is either."""

    current: frozenset[str]
    contexts: frozenset[str]


class _Located:
    def __init__(self, source: Source | None, state: str):
        self.source, self.state = source, state

    def error(self, node: ast.Node, message: str, expected: str, hint: str) -> NLDSLCompileError:
        s = node.span
        return NLDSLCompileError([Problem(f"solve for {self.state!r}: {message}", s.line, s.col,
                                          s.end_line or None, s.end_col or None, expected, hint,
                                          self.source)])


def lower_solve(objective: ast.Objective, state: str, names: Names,
                source: Source | None = None) -> tuple[list[Write], list[str]]:
    """The writes of one unit of `state: minimize L by solve` and the hidden states they keep."""
    at = _Located(source, state)
    reg = parse_regression(objective.loss, state, names, at)
    product = reg.key if reg.value_is_current else binary("*", reg.key, reg.value)
    term = binary("*", reg.gamma, product)                  # gamma_t k_t v_t (or gamma_t k_t)
    square = binary("*", reg.gamma, binary("*", reg.key, reg.key))         # gamma_t k_t^2
    writes, hidden = [], []
    if reg.width == "step":
        numerator, denominator = (ast.Name(id=f"_solve_{state}_{part}") for part in ("num", "den"))
        for acc, increment in ((numerator, term), (denominator, square)):
            writes.append(Write(acc.id, value=binary("+", acc, increment),
                                derivation="solve: running sum of eq. 102"))
            hidden.append(acc.id)
        collisions = sorted(set(hidden) & (names.current | names.contexts))
        if collisions:
            raise at.error(objective, f"the hidden sums need the names {collisions}",
                           "no spec name starting with `_solve_`", "rename the spec's name")
    else:
        numerator, denominator = term, square
    top = binary("*", reg.weight, numerator)
    if reg.value_is_current:
        top = binary("*", top, reg.value)
    bottom = binary("+", binary("*", reg.weight, denominator), reg.ridge)
    writes.append(Write(state, value=call("divide_or_zero", top, bottom),
                        derivation=f"solve: ridge regression over window {reg.width} (eqs. 101-102)"))
    return writes, hidden


def parse_regression(loss: ast.Expr, state: str, names: Names, at: _Located) -> Regression:
    """Split L into its data term, its ridge terms and terms free of S (which do not move S*)."""
    data, ridge = None, num(0)
    for term in _terms(loss, at):
        if not mentions(term, state):
            continue
        coefficient, core = _factor(term, state)
        if _is_ridge(core, state):
            ridge = binary("+", ridge, coefficient)
        elif data is not None:
            raise at.error(term, "more than one data term", FORM, "sum the data into one `window`")
        else:
            data = (coefficient, core)
    if data is None:
        raise at.error(loss, "no data term", FORM, "add a `window(..., l2(S * k, v))` term")
    weight, core = data
    if isinstance(core, ast.Call) and core.func == "window":
        width = _width(core.args[0], at)
        inner_weight, inner = _factor(core.args[1], state)
        gamma = binary("*", core.args[2] if len(core.args) > 2 else num(1), inner_weight)
    else:
        width, inner, gamma = "1", core, num(1)
    key, value = _key_and_value(inner, state, at)
    for part, what in ((key, "key"), (gamma, "gamma")):
        if _mentions_any(part, names.current):
            raise at.error(part, f"the {what} reads a state: it must be unit i's context",
                           "an expression of contexts, hyper-parameters and `step`",
                           f"declare the {what} as a `key`/`gate` of the level")
    current = _mentions_any(value, names.current)
    if current and (_mentions_any(value, names.contexts) or _calls_grad(value)):
        raise at.error(value, "the value mixes unit i's contexts with current states",
                       "a value of contexts only (v_i) or of states and reads only (eq. 101's P_t)",
                       "split the value, or make it a `read` of another level")
    if value == num(0):
        raise at.error(value, "a value of 0 makes the minimiser 0", "a nonzero value",
                       "write the update explicitly: `S <- 0 * S`")
    return Regression(width, key, value, gamma, weight, ridge, current)


def _terms(loss: ast.Expr, at: _Located) -> list[ast.Expr]:
    if isinstance(loss, ast.Binary) and loss.op == "+":
        return _terms(loss.left, at) + _terms(loss.right, at)
    if isinstance(loss, ast.Binary) and loss.op == "-":
        raise at.error(loss, "terms are subtracted", FORM, "add the terms; put signs in their weights")
    return [loss]


def _factor(term: ast.Expr, state: str) -> tuple[ast.Expr, ast.Expr]:
    """(coefficient free of S, core) with term = coefficient * core."""
    if isinstance(term, ast.Binary) and term.op == "*":
        for factor, rest in ((term.left, term.right), (term.right, term.left)):
            if not mentions(factor, state):
                coefficient, core = _factor(rest, state)
                return binary("*", factor, coefficient), core
    if isinstance(term, ast.Binary) and term.op == "/" and not mentions(term.right, state):
        coefficient, core = _factor(term.left, state)
        return binary("/", coefficient, term.right), core
    return num(1), term


def _is_ridge(core: ast.Expr, state: str) -> bool:
    s = ast.Name(id=state)
    return isinstance(core, ast.Call) and core.func == "l2" and core.args in ([s, num(0)], [num(0), s])


def _width(width: ast.Expr, at: _Located) -> str:
    if width == ast.Name(id="step"):
        return "step"
    if width == num(1):
        return "1"
    raise at.error(width, "this window width has no compiled closed form", WIDTHS,
                   "a sliding window of c > 1 units would need a ring buffer of c terms")


def _key_and_value(inner: ast.Expr, state: str, at: _Located) -> tuple[ast.Expr, ast.Expr]:
    """(k, v) of l2(S * k, v), l2(k * S, v), l2(S, v) (k = 1), either argument order."""
    if not (isinstance(inner, ast.Call) and inner.func == "l2" and len(inner.args) == 2):
        raise at.error(inner, "the data term is not an l2 regression", FORM,
                       "use l2(S * k, v); other losses take a gradient rule (`gd`)")
    a, b = inner.args
    if mentions(b, state):
        a, b = b, a
    if mentions(b, state):
        raise at.error(inner, "both sides of l2 depend on S", "l2(S * k, v) with v free of S", "")
    s = ast.Name(id=state)
    if a == s:
        return num(1), b
    if isinstance(a, ast.Binary) and a.op == "*":
        for mine, key in ((a.left, a.right), (a.right, a.left)):
            if mine == s and not mentions(key, state):
                return key, b
    raise at.error(a, "the memory is not elementwise-linear in S", "S * k (eq. 101's m * g)",
                   "a matrix memory S @ k (eqs. 106-111) needs a matrix inverse: not compiled")


def _mentions_any(expr: ast.Expr, names: frozenset[str]) -> bool:
    """Does expr read any of `names`, outside `grad(...)` (a gradient is a per-unit context)?"""
    if isinstance(expr, ast.Call) and expr.func == "grad":
        return False
    if isinstance(expr, ast.Name):
        return expr.id in names
    if isinstance(expr, ast.Call) and expr.func in names:
        return True
    return any(_mentions_any(child, names) for child in children(expr))


def _calls_grad(expr: ast.Expr) -> bool:
    if isinstance(expr, ast.Call) and expr.func == "grad":
        return True
    return any(_calls_grad(child) for child in children(expr))
