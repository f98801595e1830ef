"""check_values: hyper-parameter defaults against types and ranges; learning-rule names,
arguments and constant argument ranges."""
from __future__ import annotations

import pytest

from nldsl.language import ast
from nldsl.build import build
from nldsl.validation.common import Checker
from nldsl.validation.values import (ValueChecker, check_constants, check_hparam_values, check_hparams,
                                check_rules, describe, satisfies)
from nldsl.errors import NLDSLError, NLDSLValueError, Source
from nldsl.language.parser import parse


def messages(check, text: str) -> list[str]:
    checker = Checker(build(parse(text)), Source(text))
    check(checker)
    return [p.message for p in checker.problems]


def header(hparams: str) -> str:
    return f"optimizer o({hparams}) {{ }}"


def rule(text: str, hparams: str = "lr = 0.1, keep = 0.9") -> str:
    return (f"optimizer o({hparams}) {{\n level a every 1 step {{ state m like W = 0\n"
            f" m: minimize dot(m, grad(W)) by {text}\n W <- W - m }}\n}}")


@pytest.mark.parametrize("hparams", [
    "lr = 1e-3 > 0", "betas = (0.9, 0.999) in [0, 1)", "dim: int >= 1", "heads: int = 4 >= 1",
    "lr: float = 1", "form = \"sum\" in {\"sum\", \"ema\"}", "flag: bool = true",
    "b = 1 in (0, 1]", "lr = x", "d = 4, h = d * 2 <= 8",
], ids=lambda v: v)
def test_valid_hparams(hparams):
    assert messages(check_hparams, header(hparams)) == []


@pytest.mark.parametrize("hparams, expected", [
    ("lr = 0 > 0", "the default of 'lr' (0) is outside its declared range (> 0)"),
    ("b = 1 in [0, 1)", "the default of 'b' (1) is outside its declared range (in [0, 1))"),
    ("b = 0 in (0, 1]", "the default of 'b' (0) is outside its declared range (in (0, 1])"),
    ("betas = (0.9, 1.5) in [0, 1]",
     "the default of 'betas' ((0.9, 1.5)) is outside its declared range (in [0, 1])"),
    ("form = \"x\" in {\"sum\", \"ema\"}",
     "the default of 'form' ('x') is outside its declared range (in {\"sum\", \"ema\"})"),
    ("heads: int = 2.5", "hyper-parameter 'heads' is declared int but its default is 2.5"),
    ("flag: bool = 1", "hyper-parameter 'flag' is declared bool but its default is 1"),
    ("n: int = true", "hyper-parameter 'n' is declared int but its default is True"),
    ("name: str = 3", "hyper-parameter 'name' is declared str but its default is 3"),
], ids=["bound", "open-high", "open-low", "tuple", "choice", "int", "bool", "bool-is-not-int",
        "str"])
def test_hparam_problems(hparams, expected):
    assert messages(check_hparams, header(hparams)) == [expected]


def test_string_against_a_numeric_bound_is_outside():
    assert satisfies("a", ast.Bound(op=">", value=ast.Number(value=0)), {}) is False


def test_bound_on_unknown_value_is_undecided():
    assert satisfies(1, ast.Bound(op=">", value=ast.Name(id="q")), {}) is None


@pytest.mark.parametrize("text", [
    "gd(lr)", "gd(lr = lr, decay = keep)", "gd(0.1, 0.5)", "momentum(lr, 0.9)", "ema(keep)",
    "dgd(lr, normalized = false)", "newton_schulz(5)", "solve", "gd(lr = sigmoid(grad(W)))",
    "momentum(lr, 0.9) then newton_schulz(5)",
], ids=lambda v: v)
def test_valid_rules(text):
    assert messages(check_rules, rule(text)) == []


@pytest.mark.parametrize("text, expected", [
    ("adam(lr)", ["unknown learning rule 'adam'"]),
    ("gd(lr, 0.5, 1, 2)", ["gd() takes at most 3 arguments, got 4"]),
    ("gd(lr, decya = 0.5)", ["gd() has no argument 'decya'"]),
    ("gd(lr, lr = 0.5)", ["gd() got 'lr' twice"]),
    ("momentum(lr)", ["momentum() is missing 'beta'"]),
    ("gd(-0.1)", ["a negative learning rate: lr = -0.1"]),
    ("gd(lr, decay = 1.5)", ["a decay outside [0, 1]: decay = 1.5"]),
    ("ema(-keep)", ["a beta outside [0, 1]: beta = -0.9"]),
    ("newton_schulz(0)", ["a step count below 1: steps = 0"]),
    ("gd(lr) then adam", ["unknown learning rule 'adam'"]),
    ("gd(lr, clip = 0)", ["a gradient-norm bound that is not positive: clip = 0"]),
], ids=["unknown", "too-many", "unknown-keyword", "twice", "missing", "negative-lr", "decay",
        "beta-from-hparam", "steps", "in-a-chain", "clip-zero"])
def test_rule_problems(text, expected):
    assert messages(check_rules, rule(text)) == expected


@pytest.mark.parametrize("constraint, text", [
    (ast.Bound(op=">=", value=ast.Number(value=1)), ">= 1"),
    (ast.Interval(low=ast.Number(value=0), high=ast.Number(value=1), low_closed=False,
                  high_closed=True), "in (0, 1]"),
    (ast.Choice(options=[ast.String(value="a")]), "in {\"a\"}"),
], ids=["bound", "interval", "choice"])
def test_describe(constraint, text):
    assert describe(constraint) == text


@pytest.mark.parametrize("constraint", [
    ast.Bound(op=">=", value=ast.Number(value=0)), ast.Bound(op="!=", value=ast.Number(value=0)),
    ast.Interval(low=ast.Number(value=0), high=ast.Number(value=1), low_closed=True, high_closed=True),
], ids=[">=", "!=", "interval"])
def test_nan_never_satisfies_a_range(constraint):
    assert satisfies(float("nan"), constraint, {}) is False
    assert satisfies((0.5, float("nan")), constraint, {}) is False


@pytest.mark.parametrize("hparams, expected", [
    ("lr = 10 ** 1000", "`10 ** 1000` is too large for a float"),
    ("s = \"a\", t = s * 2", "a string is used as a number in `s * 2` (s = 'a')"),
], ids=["overflowing-default", "string-default-used-as-a-number"])
def test_a_default_no_tensor_can_hold_is_reported(hparams, expected):
    assert messages(check_constants, header(hparams)) == [expected]


def test_a_string_used_as_a_number_in_an_update_is_reported_where_it_is_used():
    text = ('optimizer o(lr = 0.1, s = "a") {\n level w every 1 step {\n'
            '  W <- W - grad(W) * lr * s\n }\n}')
    checker = Checker(build(parse(text)), Source(text))
    check_constants(checker)
    (problem,) = checker.problems
    assert problem.message == "a string is used as a number in `grad(W) * lr * s` (s = 'a')"
    assert (problem.line, problem.col) == (3, 12)


SPEC = """optimizer o(lr = 0.1 > 0, betas = (0.9, 0.99) in [0, 1), n = 2, k: int = 3 >= 1,
            flag = false, form = "a" in {"a", "b"}, free, low = 0, high = 1 >= low) {
  level slow every n steps {
    state m : [k] = 0
    m <- m + 1
  }
  level w every 1 step {
    W <- W - lr * grad(W) * free if form == "a" else W
  }
}"""


def value_messages(**values) -> list[str]:
    text = SPEC
    try:
        check_hparam_values(build(parse(text)).decl, values, Source(text))
    except NLDSLValueError as error:
        return [p.message for p in error.problems]
    return []


@pytest.mark.parametrize("values", [
    dict(lr=1), dict(lr=1e-3), dict(betas=(0, 0.5)), dict(betas=[0.5, 0.5]), dict(n=3), dict(k=1),
    dict(flag=True), dict(form="b"), dict(free=2), dict(low=-1, high=-1),
], ids=lambda v: ", ".join(f"{k}={x!r}" for k, x in v.items()))
def test_values_that_meet_their_declarations(values):
    assert value_messages(**values) == []


@pytest.mark.parametrize("values, expected", [
    (dict(lr=0), ["o: lr = 0 is outside its declared range (> 0)"]),
    (dict(lr=float("nan")), ["o: lr = nan is outside its declared range (> 0)"]),
    (dict(lr=float("inf"), betas=(0.9, float("inf"))),
     ["o: betas = (0.9, inf) is outside its declared range (in [0, 1))"]),
    (dict(lr=True), ["o: lr = True is not a number (its default is 0.1)"]),
    (dict(lr="0.1"), ["o: lr = '0.1' is not a number (its default is 0.1)"]),
    (dict(betas=(0.9,)), ["o: betas = (0.9,) is not a tuple of 2 numbers (its default is (0.9, 0.99))"]),
    (dict(betas=(0.9, "x")), ["o: betas = (0.9, 'x') is not a tuple of 2 numbers (its default is (0.9, 0.99))"]),
    (dict(k=2.0), ["o: k = 2.0 is not an int (declared `k: int`)"]),
    (dict(flag=0), ["o: flag = 0 is not a bool (its default is False)"]),
    (dict(form="c"), ["o: form = 'c' is not one of ['a', 'b']"]),
    (dict(form=1), ["o: form = 1 is not a string (its default is 'a')"]),
    (dict(n=0), ["o: a level's period (`every n steps` in level 'slow') must be a positive "
                 "integer, got 0 (from n = 0)"]),
    (dict(n=2.5), ["o: a level's period (`every n steps` in level 'slow') must be a positive "
                   "integer, got 2.5 (from n = 2.5)"]),
    (dict(k=0), ["o: k = 0 is outside its declared range (>= 1)"]),
    (dict(high=-1), ["o: high = -1 is outside its declared range (>= low)"]),
    (dict(lr=-1, k=0, flag=1), ["o: lr = -1 is outside its declared range (> 0)",
                                "o: k = 0 is outside its declared range (>= 1)",
                                "o: flag = 1 is not a bool (its default is False)"]),
], ids=["bound", "nan", "inf-outside-an-interval", "bool-for-a-number", "string-for-a-number",
        "short-tuple", "string-in-a-tuple", "float-for-an-int", "int-for-a-bool", "choice",
        "number-for-a-string", "period-zero", "period-fraction", "int-below-range",
        "range-of-another-hparam", "all-at-once-in-source-order"])
def test_values_that_break_their_declarations(values, expected):
    assert value_messages(**values) == expected


def test_a_dim_set_by_a_passed_value_is_checked():
    text = "module m(dim: int >= 1, h = 4) {\n state A : [dim, h] = 0\n}"
    with pytest.raises(NLDSLValueError, match=r"m: dimension `h` of state 'A' must be a positive "
                                              r"integer, got -2 \(from h = -2\)"):
        check_hparam_values(build(parse(text)).decl, {"dim": 3, "h": -2}, Source(text))


def test_a_passed_string_used_as_a_number_is_located_where_it_is_used():
    text = "optimizer o(s) {\n level w every 1 step {\n  W <- W - s * grad(W)\n }\n}"
    with pytest.raises(NLDSLValueError) as caught:
        check_hparam_values(build(parse(text)).decl, {"s": "x"}, Source(text))
    (problem,) = caught.value.problems
    assert problem.message == "o: a string is used as a number in `s * grad(W)` (s = 'x')"
    assert (problem.line, problem.col) == (3, 12)


def test_a_value_error_is_located_and_explained():
    text = SPEC
    with pytest.raises(ValueError) as caught:
        check_hparam_values(build(parse(text)).decl, {"lr": -1}, Source(text, "o.nl"))
    assert isinstance(caught.value, NLDSLError)
    assert str(caught.value) == """o.nl:1:22: error: o: lr = -1 is outside its declared range (> 0)
    |
  1 | optimizer o(lr = 0.1 > 0, betas = (0.9, 0.99) in [0, 1), n = 2, k: int = 3 >= 1,
    |                      ^~~
  expected: a value > 0
  hint: pass lr= a value > 0, or change the range in the spec if the value is meant"""


def test_a_default_computed_from_a_passed_value_meets_its_range():
    text = "optimizer o(d = 4, h = d * 2 <= 8) { }"
    with pytest.raises(NLDSLValueError, match=r"o: h = 10 \(from d = 5\) is outside its declared "
                                              r"range \(<= 8\)"):
        check_hparam_values(build(parse(text)).decl, {"d": 5}, Source(text))
    check_hparam_values(build(parse(text)).decl, {"d": 5, "h": 8}, Source(text))


def test_only_the_changed_values_are_checked_again():
    checker = ValueChecker(build(parse(SPEC)).decl, Source(SPEC))
    values = dict(lr=-1, n=2, high=1)
    assert [p.message for p in checker.problems(values, changed={"n"})] == []
    assert len(checker.problems(values, changed={"lr"})) == 1
    assert len(checker.problems(dict(low=5, high=1), changed={"low"})) == 1
