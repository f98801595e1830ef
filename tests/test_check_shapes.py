"""check_shapes: symbolic feature widths of matmuls, memory inputs and elementwise operators,
including levels split into heads."""
from __future__ import annotations

import pytest

import nldsl

from nldsl.build import build
from nldsl.check_common import Checker
from nldsl.check_shapes import check_shapes
from nldsl.errors import Source
from nldsl.parser import parse

HPARAMS = "dim: int >= 1, hidden: int = 32, heads = 4, head_dim = 8"


def problems(body: str, hparams: str = HPARAMS):
    text = f"module m({hparams}) {{\n{body}\n}}"
    checker = Checker(build(parse(text)), Source(text))
    check_shapes(checker)
    return checker.problems


def messages(body, **kw):
    return [p.message for p in problems(body, **kw)]


PER_HEAD = """
state Wk : [dim, heads * head_dim]
state Wv : [dim, heads * head_dim]
state W_beta : [dim, heads]
state Wo : [heads * head_dim, dim]
level memory every 1 token heads heads {
  state M : [head_dim, head_dim] = 0
  key k = l2norm(x @ Wk)
  value v = x @ Wv
  gate beta = sigmoid(x @ W_beta)
  M <- beta * M - beta * outer(M(k) - v, k)
  minimize l2(M(x @ Wk), v) by gd(lr = beta)
  read y = M(k)
}
out = (rmsnorm(y) * sigmoid(x @ Wv)) @ Wo
"""


@pytest.mark.parametrize("body", [
    pytest.param(PER_HEAD, id="per-head-contexts-gates-and-merged-reads"),
    pytest.param("state Wk : [dim, hidden]\n level a every 1 token {"
                 " state M : mlp(hidden -> 4 * hidden -> dim, gelu)\n key k = x @ Wk\n"
                 " minimize l2(M(k), x) by gd(lr = 0.1)\n read y = M(k) }\n out = y + x",
                 id="mlp-memory"),
    pytest.param("out = x * norm(x) + x / sum(x) - mean(x)", id="width-one-broadcasts"),
    pytest.param("state s : scalar = 1\n out = s * x + 2", id="scalars-broadcast"),
    pytest.param("out = x @ Wq", id="unknown-names-are-not-judged"),
])
def test_valid_shapes(body):
    assert messages(body) == []


@pytest.mark.parametrize("body, expected", [
    pytest.param("state A : [dim, hidden]\n out = (x @ A) @ A",
                 "shape mismatch in `x @ A @ A`: the left side ends in [hidden] but the right "
                 "side expects [dim]", id="matmul"),
    pytest.param("state A : [dim, hidden]\n out = x * (x @ A)",
                 "shape mismatch in `x * (x @ A)`: [dim] vs [hidden]", id="elementwise"),
    pytest.param("state Wk : [dim, heads * head_dim]\n out = x + x @ Wk",
                 "shape mismatch in `x + x @ Wk`: [dim] vs [heads * head_dim]",
                 id="dim-is-not-heads-times-head-dim"),
    pytest.param("level a every 1 token { state M : [dim, hidden]\n read y = M(x) }",
                 "shape mismatch: memory 'M' takes inputs of width [hidden] but `x` has width "
                 "[dim]", id="matrix-memory"),
    pytest.param("level a every 1 token { state M : mlp(hidden -> dim)\n read y = M(x) }",
                 "shape mismatch: memory 'M' takes inputs of width [hidden] but `x` has width "
                 "[dim]", id="mlp-memory"),
    pytest.param("state Wk : [dim, heads * hidden]\n level a every 1 token heads heads {"
                 " state M : [head_dim, head_dim]\n key k = x @ Wk\n read y = M(k) }",
                 "shape mismatch: memory 'M' takes inputs of width [head_dim] but `k` has width "
                 "[hidden]", id="per-head-key-of-the-wrong-width"),
])
def test_shape_mismatch(body, expected):
    assert messages(body) == [expected]


def test_mismatch_points_at_the_operator_expression():
    (problem,) = problems("state A : [dim, hidden]\n out = x * (x @ A)")
    assert (problem.line, problem.col) == (3, 8)


def test_module_without_dim_leaves_x_unknown():
    assert messages("state A : [d, e]\n out = x @ A", hparams="d, e") == []


@pytest.mark.parametrize("name, expected", [
    pytest.param("titans", {"k": ("head_dim",), "theta": ("1",), "y": ("heads * head_dim",)},
                 id="titans-per-head-contexts-and-merged-read"),
    pytest.param("hope", {"k": ("dim",), "eta": ("1",), "o": ("dim",), "y": ("dim",)},
                 id="hope-self-modifying-and-cms-chain"),
])
def test_infer_shapes_names_dims_as_the_spec_writes_them(name, expected):
    shapes = nldsl.load(name).shapes()
    assert {key: shapes[key] for key in expected} == expected
