"""Constant evaluation of expressions under hyper-parameter values (never `eval`)."""
from __future__ import annotations

import math

import pytest

from nldsl import ast
from nldsl.consteval import NotConstant, calls_in, evaluate, hparam_values, names_in, try_evaluate
from nldsl.parser import parse


def expr(text: str) -> ast.Expr:
    """The expression of `let e = text` inside a one-level optimizer."""
    decl = parse("optimizer o() {\n level a every 1 step {\n let e = " + text + "\n }\n}")
    return decl.levels[0].items[0].value


@pytest.mark.parametrize("text, env, value", [
    ("1 + 2 * 3", {}, 7),
    ("2 ** 3 ** 2", {}, 2 ** 9),
    ("-a / 4", {"a": 2}, -0.5),
    ("(1 - b) / f", {"b": 0.9, "f": 10}, (1 - 0.9) / 10),
    ("betas[1]", {"betas": (0.9, 0.999)}, 0.999),
    ("(1, 2)", {}, (1, 2)),
    ("1 if form == \"ema\" else 2", {"form": "ema"}, 1),
    ("1 if form == \"ema\" else 2", {"form": "sum"}, 2),
    ("not true or false", {}, False),
    ("true and 3 > 2", {}, True),
    ("sqrt(16) + exp(0) + log(1) + abs(-2)", {}, 7.0),
    ("sigmoid(0)", {}, 0.5),
    ("tanh(0)", {}, 0.0),
    ("max(2, 3) + min(2, 3)", {}, 5),
], ids=lambda v: v if isinstance(v, str) else None)
def test_evaluate(text, env, value):
    assert evaluate(expr(text), env) == pytest.approx(value)


@pytest.mark.parametrize("text", ["x", "x @ W", "relu(2)", "grad(W)", "M(1)", "sqrt(1, 2)"],
                         ids=["unbound-name", "matmul", "tensor-function", "gradient", "memory",
                              "wrong-arity"])
def test_not_constant(text):
    with pytest.raises(NotConstant):
        evaluate(expr(text), {"W": 1})


@pytest.mark.parametrize("text, env", [
    ("1 / 0", {}), ("log(0)", {}), ("t[5]", {"t": (1, 2)}), ("\"a\" - 1", {}), ("x", {}),
    ("10.0 ** 1000", {}),
], ids=["zero-division", "log-zero", "index-out-of-range", "type-error", "unbound", "overflow"])
def test_try_evaluate_is_none_when_unknown_or_failing(text, env):
    assert try_evaluate(expr(text), env) is None


def test_try_evaluate_none_expression():
    assert try_evaluate(None, {}) is None


def test_hparam_values_defaults_chain_and_overrides():
    decl = parse("optimizer o(d = 4, h = d * 2, lr > 0, bad = 1 / 0, x = q) { }")
    assert hparam_values(decl) == {"d": 4, "h": 8}
    assert hparam_values(decl, {"d": 5, "lr": 0.1}) == {"d": 5, "h": 10, "lr": 0.1}


def test_names_and_calls_in_source_order():
    e = expr("sigmoid(x @ Wk) * f(g) + b")
    assert [n.id for n in names_in(e)] == ["x", "Wk", "g", "b"]
    assert [c.func for c in calls_in(e)] == ["sigmoid", "f"]


def test_constant_math_matches_python():
    assert evaluate(expr("sqrt(2) * 3"), {}) == math.sqrt(2) * 3
