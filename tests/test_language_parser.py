"""Text to AST: what each construct parses to, where its span points, and that the grammar
is a conflict-free LALR grammar shipped inside the package."""
from __future__ import annotations

from importlib import resources

import pytest
from lark import Lark

from nldsl.language import ast
from nldsl.errors import NLDSLSyntaxError
from nldsl.language.parser import grammar_text, parse

SPEC = """\
# a comment
module m(dim: int >= 1, betas = (0.9, 0.99) in [0, 1), mode = "a" in {"a", "b"}, lr = 1e-3 > 0) {
  state Wk : [dim, 2 * dim] = normal(0.02)
  level memory every 4 tokens chunk 8 heads 2 backprop partial drop {
    state M : mlp(dim -> 4 * dim -> dim, gelu, residual) init learned by outer
    key k = l2norm(x @ Wk)
    gate eta = sigmoid(x) if mode == "a" else 0.5
    M: minimize l2(M(k), k) by momentum(lr = eta, beta = betas[0]) then newton_schulz(5)
    read y = M(k) before write
  }
  out = -y ** 2
}
"""


@pytest.fixture(scope="module")
def decl() -> ast.SpecDecl:
    return parse(SPEC, "m.nl")


def test_grammar_is_strict_lalr_and_ships_in_the_package():
    shipped = resources.files("nldsl.grammar").joinpath("nldsl.lark").read_text()
    assert shipped == grammar_text()
    Lark(shipped, parser="lalr", strict=True, propagate_positions=True)  # raises on any conflict


def test_hyper_parameters(decl):
    dim, betas, mode, lr = decl.hparams
    assert (dim.name, dim.type, dim.default) == ("dim", "int", None)
    assert dim.constraints == [ast.Bound(op=">=", value=ast.Number(value=1))]
    assert betas.default == ast.Tuple(items=[ast.Number(value=0.9), ast.Number(value=0.99)])
    interval = betas.constraints[0]
    assert (interval.low_closed, interval.high_closed) == (True, False)
    assert mode.constraints == [ast.Choice(options=[ast.String(value="a"), ast.String(value="b")])]
    assert lr.default == ast.Number(value=0.001)


def test_level_header_options(decl):
    level = decl.levels[0]
    assert (level.name, level.every, level.unit) == ("memory", ast.Number(value=4), "token")
    assert (level.chunk, level.heads) == (ast.Number(value=8), ast.Number(value=2))
    assert (level.backprop, level.partial) == (True, "drop")


def test_states_contexts_objectives_and_reads(decl):
    state, key, gate, objective, read = decl.levels[0].items
    assert state.shape == ast.MLPShape(widths=[ast.Name(id="dim"), ast.Binary(
        op="*", left=ast.Number(value=4), right=ast.Name(id="dim")), ast.Name(id="dim")],
        options=["gelu", "residual"])
    assert state.init == ast.InitLearned(by="outer")
    assert (key.role, key.name) == ("key", "k")
    assert isinstance(gate.value, ast.Conditional) and gate.value.cond.op == "=="
    assert objective.state == "M" and [r.name for r in objective.rules] == ["momentum", "newton_schulz"]
    assert [k.name for k in objective.rules[0].kwargs] == ["lr", "beta"]
    assert objective.rules[0].kwargs[1].value == ast.Index(value=ast.Name(id="betas"),
                                                           index=ast.Number(value=0))
    assert (read.name, read.before_write) == ("y", True)


@pytest.mark.parametrize("text, expected", [
    pytest.param("-y ** 2", ast.Unary(op="-", operand=ast.Binary(
        op="**", left=ast.Name(id="y"), right=ast.Number(value=2))), id="power-binds-tighter-than-minus"),
    pytest.param("a - b - c", ast.Binary(op="-", left=ast.Binary(
        op="-", left=ast.Name(id="a"), right=ast.Name(id="b")), right=ast.Name(id="c")),
        id="minus-is-left-associative"),
    pytest.param("a ** b ** c", ast.Binary(op="**", left=ast.Name(id="a"), right=ast.Binary(
        op="**", left=ast.Name(id="b"), right=ast.Name(id="c"))), id="power-is-right-associative"),
    pytest.param("a + b @ c", ast.Binary(op="+", left=ast.Name(id="a"), right=ast.Binary(
        op="@", left=ast.Name(id="b"), right=ast.Name(id="c"))), id="matmul-binds-like-times"),
    pytest.param("not a and b", ast.Binary(op="and", left=ast.Unary(op="not", operand=ast.Name(
        id="a")), right=ast.Name(id="b")), id="not-binds-tighter-than-and"),
])
def test_expression_precedence(text, expected):
    decl = parse(f"module m(dim) {{\n  out = {text}\n}}\n")
    assert decl.items[-1].value == expected


def test_spans_point_at_the_text(decl):
    lines = SPEC.splitlines()
    key = decl.levels[0].items[1]
    assert lines[key.span.line - 1][key.span.col - 1:].startswith("key k")
    matmul = key.value.args[0]
    assert lines[matmul.span.line - 1][matmul.span.col - 1:matmul.span.end_col - 1] == "x @ Wk"
    out = decl.items[-1]
    assert (out.span.line, out.span.col) == (11, 3)


@pytest.mark.parametrize("text", [
    pytest.param("every 1 step", id="singular-unit"),
    pytest.param("every 1 steps", id="plural-unit"),
])
def test_units_are_normalised(text):
    decl = parse(f"optimizer o() {{ level a {text} {{ W <- W }} }}")
    assert decl.levels[0].unit == "step"


def test_spans_are_not_part_of_equality():
    assert parse("module m(dim) { out = x }") == parse("module m(dim) {\n\n   out   =   x\n}")


@pytest.mark.parametrize("expression, column", [
    pytest.param("x +", 12, id="plus"),
    pytest.param("x **", 13, id="power"),
    pytest.param("(x and)", 15, id="and-inside-parentheses"),
])
def test_an_expression_ending_on_an_operator_is_a_missing_operand(expression, column):
    # the caret goes just after the operator: column of its last character + 1
    with pytest.raises(NLDSLSyntaxError) as caught:
        parse(f"module m(dim) {{\n  out = {expression}\n}}\n", "bad.nl")
    assert str(caught.value).startswith(f"bad.nl:2:{column}: error: missing operand")


def _sum_spec(terms: int) -> str:
    return ("optimizer s(lr = 0.1 > 0) {\n  level w every 1 step {\n"
            f"    W <- W - lr * ({' + '.join(['grad(W)'] * terms)})\n  }}\n}}\n")


def test_nesting_is_bounded_by_what_every_stage_can_walk(monkeypatch):
    """A sum of N terms nests N deep, and every later stage walks it recursively: the parser
    refuses what the recursion limit cannot carry (FRAMES_PER_LEVEL frames a level) with a
    located error, so no stage raises RecursionError."""
    from nldsl.language.parser import FRAMES_PER_LEVEL, max_depth

    assert max_depth() == __import__("sys").getrecursionlimit() // FRAMES_PER_LEVEL
    parse(_sum_spec(max_depth() - 10))
    with pytest.raises(NLDSLSyntaxError) as caught:
        parse(_sum_spec(max_depth()))
    problem = caught.value.problems[0]
    assert problem.message.startswith("expression nested too deeply (")
    assert problem.message.endswith(f" levels, at most {max_depth()})")
    assert (problem.line, problem.hint) == (3, "name the inner parts with `let` definitions")
