"""Constant evaluation of expressions under hyper-parameter values (never `eval`)."""
from __future__ import annotations

import math

import pytest

from nldsl.language import ast
from nldsl.language.consteval import (BadConstant, NotConstant, calls_in, constant_problems, evaluate,
                             hparam_values, names_in, shown_value, try_evaluate)
from nldsl.language.printer import format_expr
from nldsl.language.parser import parse


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


@pytest.mark.parametrize("text, env, message", [
    ("10 ** 1000", {}, "`10 ** 1000` is too large for a float"),
    ("10 ** 10 ** 10", {}, "`10 ** 10 ** 10` is too large for a float"),
    ("1e300 * 1e300", {}, "`1e+300 * 1e+300` is too large for a float"),
    ("exp(1000)", {}, "`exp(1000)` is too large for a float"),
    ("lr * s", {"lr": 0.1, "s": "a"}, "a string is used as a number in `lr * s` (s = 'a')"),
    ("2 * s", {"s": "ab"}, "a string is used as a number in `2 * s` (s = 'ab')"),
    ("-s", {"s": "a"}, "a string is used as a number in `-s` (s = 'a')"),
    ("sqrt(s)", {"s": "a"}, "a string is used as a number in `sqrt(s)` (s = 'a')"),
    ("betas * 2", {"betas": (0.9, 0.99)}, "a tuple is used as a number in `betas * 2` (betas = (0.9, 0.99))"),
], ids=["int-power", "tower-decided-without-computing-it", "float-product", "exp", "string",
        "string-repeated", "negated-string", "string-argument", "tuple"])
def test_a_constant_no_tensor_can_hold_is_a_bad_constant(text, env, message):
    with pytest.raises(BadConstant) as caught:
        evaluate(expr(text), env)
    assert caught.value.message == message
    assert try_evaluate(expr(text), env) is None


@pytest.mark.parametrize("text, env", [
    ("s == \"a\"", {"s": "a"}), ("1 if s != \"b\" else 2", {"s": "a"}), ("betas[0] * 2", {"betas": (1, 2)}),
    ("inf_ish * 10", {"inf_ish": math.inf}), ("2 ** 1000", {}),
], ids=["string-compared", "string-in-a-condition", "tuple-indexed", "inf-stays-inf", "wide-int-that-fits"])
def test_strings_compared_and_tuples_indexed_are_fine(text, env):
    evaluate(expr(text), env)


def _bad_nodes(text: str, env: dict) -> list[str]:
    return [format_expr(b.node) for b in constant_problems(expr(text), env)]


@pytest.mark.parametrize("text, env, nodes", [
    ("grad(W) * lr * s", {"lr": 0.1, "s": "a"}, ["grad(W) * lr * s"]),
    ("lr * s * grad(W)", {"lr": 0.1, "s": "a"}, ["lr * s"]),
    ("sqrt(grad(W)) + 10 ** 1000 + 10 ** 999", {}, ["10 ** 1000", "10 ** 999"]),
    ("(10 ** 1000 if f == 1 else 0) * grad(W)", {"f": 2}, []),
    ("(10 ** 1000 if f == 1 else 0) * grad(W)", {"f": 1}, ["10 ** 1000"]),
    ("(10 ** 1000 if grad(W) > 0 else 0)", {}, ["10 ** 1000"]),
    ("lr * grad(W)", {"lr": 0.1}, []),
    ("1e400 * grad(W)", {}, ["inf"]),
], ids=["string-times-a-tensor", "innermost-node", "every-one", "untaken-branch",
        "taken-branch", "data-dependent-branch", "none", "literal-that-reads-as-inf"])
def test_constant_problems_finds_each_at_its_innermost_node(text, env, nodes):
    assert _bad_nodes(text, env) == nodes


def test_constant_problems_evaluates_each_node_once(monkeypatch):
    """A left-deep sum fails (not constant) at its first leaf: rescanning every subtree from
    the top would evaluate it quadratically often (issue 8, item 3)."""
    import nldsl.language.consteval as consteval
    tree = expr(" + ".join(["grad(W)"] * 100) + " + 10 ** 1000")
    nodes, calls = [], []
    consteval._walk(tree, nodes.append)
    original = consteval._value
    monkeypatch.setattr(consteval, "_value", lambda *a: calls.append(1) or original(*a))
    assert [format_expr(b.node) for b in constant_problems(tree, {})] == ["10 ** 1000"]
    assert len(calls) == len(nodes)


class _Crafted(str):
    def __repr__(self):
        raise AssertionError("a caller's __repr__ must never run")


@pytest.mark.parametrize("value, text", [
    (_Crafted("a"), "'a'"), ((0.9, "b"), "(0.9, 'b')"), ([1, 2], "[1, 2]"), ((1,), "(1,)"),
    (10 ** 5000, "an int of about 5001 digits"), (object(), "<object>"),
], ids=["str-subclass", "tuple", "list", "one-tuple", "huge-int", "other"])
def test_shown_value_writes_values_itself(value, text):
    assert shown_value(value) == text
