"""nldsl/language/printer.py: canonical text that parses back to the same AST."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from nldsl.language import ast
from nldsl.library import stdlib_names, stdlib_text
from nldsl.language.parser import parse
from nldsl.language.printer import format_expr, format_spec
from nldsl.testing import EXAMPLE_SPECS, exprs, specs

GENERATED = settings(max_examples=150, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

SPEC_TEXTS = [pytest.param(stdlib_text(name), id=f"stdlib-{name}") for name in stdlib_names()]
SPEC_TEXTS += [pytest.param(text, id=f"example-{name}") for name, text in EXAMPLE_SPECS.items()]


def typed_dump(node: ast.Node) -> str:
    """The AST's content with Python types visible: `repr` tells `1` from `1.0`, which `==`
    on dumps does not."""
    return repr(node.model_dump())


def parse_expr(text: str) -> ast.Expr:
    return parse(f"optimizer o() {{ let e = {text} }}").items[0].value


def assert_round_trip(decl: ast.SpecDecl) -> None:
    text = format_spec(decl)
    again = parse(text)
    assert again == decl, text
    assert typed_dump(again) == typed_dump(decl), text
    assert format_spec(again) == text


@GENERATED
@given(specs())
def test_generated_specs_round_trip(decl):
    assert_round_trip(decl)


@GENERATED
@given(exprs(max_leaves=12))
def test_generated_exprs_round_trip(expr):
    text = format_expr(expr)
    assert typed_dump(parse_expr(text)) == typed_dump(expr), text


@pytest.mark.parametrize("text", SPEC_TEXTS)
def test_spec_texts_round_trip(text):
    assert_round_trip(parse(text))


@pytest.mark.parametrize("text", SPEC_TEXTS)
def test_printing_is_idempotent(text):
    once = format_spec(parse(text))
    assert format_spec(parse(once)) == once


@pytest.mark.parametrize("source, canonical", [
    pytest.param("-a ** b", "-a ** b", id="unary-minus-binds-looser-than-power"),
    pytest.param("(-a) ** b", "(-a) ** b", id="negated-base-keeps-parens"),
    pytest.param("a ** -b", "a ** -b", id="negative-exponent-needs-no-parens"),
    pytest.param("a ** b ** c", "a ** b ** c", id="power-is-right-associative"),
    pytest.param("(a ** b) ** c", "(a ** b) ** c", id="left-nested-power-keeps-parens"),
    pytest.param("(a - b) - c", "a - b - c", id="sub-is-left-associative"),
    pytest.param("a - (b - c)", "a - (b - c)", id="right-nested-sub-keeps-parens"),
    pytest.param("a / (b * c)", "a / (b * c)", id="right-nested-product-keeps-parens"),
    pytest.param("(a + b) @ c", "(a + b) @ c", id="sum-inside-product"),
    pytest.param("((a * b))", "a * b", id="redundant-parens-dropped"),
    pytest.param("(a < b) < c", "(a < b) < c", id="comparison-is-non-associative"),
    pytest.param("a + 1 < b * 2", "a + 1 < b * 2", id="arith-inside-comparison"),
    pytest.param("not (a and b)", "not (a and b)", id="not-of-and"),
    pytest.param("not a < b", "not a < b", id="not-binds-looser-than-comparison"),
    pytest.param("-(a < b)", "-(a < b)", id="minus-of-comparison"),
    pytest.param("(a or b) and c", "(a or b) and c", id="or-inside-and"),
    pytest.param("a or b and c", "a or b and c", id="and-binds-tighter-than-or"),
    pytest.param("a if b else c if d else e", "a if b else c if d else e",
                 id="conditional-nests-right"),
    pytest.param("(a if b else c) if d else e", "(a if b else c) if d else e",
                 id="conditional-in-then-keeps-parens"),
    pytest.param("- -a", "- -a", id="double-negation-is-spaced"),
    pytest.param("(-a)[0]", "(-a)[0]", id="index-of-negation"),
    pytest.param("f(a, b, k = c)[1][2]", "f(a, b, k = c)[1][2]", id="call-then-index"),
    pytest.param("(a,)", "(a,)", id="one-tuple-keeps-comma"),
    pytest.param("(a, b,)", "(a, b)", id="trailing-comma-dropped"),
    pytest.param("1e-3", "0.001", id="float-by-repr"),
    pytest.param(".5", "0.5", id="leading-dot-float"),
    pytest.param("3", "3", id="int-stays-int"),
    pytest.param("3.0", "3.0", id="float-stays-float"),
    pytest.param("1E+20", "1e+20", id="large-float-exponent"),
    pytest.param('"quintic"', '"quintic"', id="string"),
    pytest.param("true and false", "true and false", id="booleans"),
])
def test_canonical_expression_text(source, canonical):
    assert format_expr(parse_expr(source)) == canonical


@pytest.mark.parametrize("expr, text", [
    pytest.param(ast.Binary(op="**", left=ast.Unary(op="-", operand=ast.Name(id="a")),
                            right=ast.Name(id="b")), "(-a) ** b", id="power-of-negation"),
    pytest.param(ast.Unary(op="-", operand=ast.Binary(op="**", left=ast.Name(id="a"),
                                                       right=ast.Name(id="b"))),
                 "-a ** b", id="negation-of-power"),
    pytest.param(ast.Binary(op="*", left=ast.Name(id="a"), right=ast.Number(value=-2)),
                 "a * -2", id="negative-number-literal"),
])
def test_format_expr_of_built_nodes(expr, text):
    assert format_expr(expr) == text


def test_numbers_keep_their_python_type():
    decl = parse("optimizer o(a = 2, b = 2.0, c = 1e-8) { }")
    printed = parse(format_spec(decl))
    assert [type(h.default.value) for h in printed.hparams] == [int, float, float]
    assert [h.default.value for h in printed.hparams] == [2, 2.0, 1e-8]


def test_long_header_puts_one_hparam_per_line():
    names = ", ".join(f"hyper_parameter_{i} = {i}" for i in range(6))
    text = format_spec(parse(f"module m({names}) {{ }}"))
    lines = text.splitlines()
    assert lines[0] == "module m("
    assert lines[1:7] == [f"  hyper_parameter_{i} = {i}," for i in range(6)]
    assert lines[7:] == [") {", "}"]


def test_level_layout():
    text = format_spec(parse(
        "optimizer o() { level a every 2 steps chunk 4 backprop { W <- W } level b every 1 step { } }"))
    assert text == ("optimizer o() {\n"
                    "  level a every 2 steps chunk 4 backprop {\n"
                    "    W <- W\n"
                    "  }\n"
                    "\n"
                    "  level b every 1 step { }\n"
                    "}\n")
