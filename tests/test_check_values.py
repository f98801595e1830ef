"""check_values: hyper-parameter defaults against types and ranges; learning-rule names,
arguments and constant argument ranges."""
from __future__ import annotations

import pytest

from nldsl import ast
from nldsl.build import build
from nldsl.check_common import Checker
from nldsl.check_values import check_hparams, check_rules, describe, satisfies
from nldsl.errors import Source
from nldsl.parser import parse


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
    ("gd(lr, 0.5, 1)", ["gd() takes at most 2 arguments, got 3"]),
    ("gd(lr, decya = 0.5)", ["gd() has no argument 'decya'"]),
    ("gd(lr, lr = 0.5)", ["gd() got 'lr' twice"]),
    ("momentum(lr)", ["momentum() is missing 'beta'"]),
    ("gd(-0.1)", ["a negative learning rate: lr = -0.1"]),
    ("gd(lr, decay = 1.5)", ["a decay outside [0, 1]: decay = 1.5"]),
    ("ema(-keep)", ["a beta outside [0, 1]: beta = -0.9"]),
    ("newton_schulz(0)", ["a step count below 1: steps = 0"]),
    ("gd(lr) then adam", ["unknown learning rule 'adam'"]),
], ids=["unknown", "too-many", "unknown-keyword", "twice", "missing", "negative-lr", "decay",
        "beta-from-hparam", "steps", "in-a-chain"])
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
