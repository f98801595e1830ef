"""check_shapes: symbolic feature widths of matmuls, memory inputs and elementwise operators,
including levels split into heads."""
from __future__ import annotations

import pytest
import torch

import nldsl

from nldsl.build import build
from nldsl.validation.common import Checker
from nldsl.validation.shapes import check_shapes
from nldsl.errors import Source
from nldsl.language.parser import parse

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


@pytest.mark.parametrize("body, hparams, expected", [
    pytest.param("state A : [0] = 0", HPARAMS,
                 ["dimension `0` of state 'A' must be a positive integer, got 0"], id="zero"),
    pytest.param("state A : [-3, 2] = 0", HPARAMS,
                 ["dimension `-3` of state 'A' must be a positive integer, got -3"], id="negative"),
    pytest.param("state A : [2.5] = 0", HPARAMS,
                 ["dimension `2.5` of state 'A' must be a positive integer, got 2.5"], id="fraction"),
    pytest.param("state A : [dim, d] = 0", "dim: int >= 1, d = 0",
                 ["dimension `d` of state 'A' must be a positive integer, got 0"], id="from-a-default"),
    pytest.param("state A : [dim, heads * head_dim] = 0", "dim: int >= 1, heads = 4, head_dim = -2",
                 ["dimension `heads * head_dim` of state 'A' must be a positive integer, got -8"],
                 id="product-of-defaults"),
    pytest.param("level a every 1 token { state M : mlp(dim -> h -> dim, gelu)\n read y = M(x) }",
                 "dim: int >= 1, h = -5",
                 ["width `h` of state 'M' must be a positive integer, got -5"], id="mlp-width"),
    pytest.param("level a every 1 token { state M : mlp(dim -> h -> dim, gelu)\n read y = M(x) }",
                 "dim: int >= 1, h = 0",
                 ["width `h` of state 'M' must be a positive integer, got 0"], id="mlp-width-zero"),
])
def test_a_dim_must_be_a_positive_integer(body, hparams, expected):
    assert messages(body, hparams=hparams) == expected


def test_a_dim_without_a_value_is_not_judged():
    assert messages("state A : [dim, 4 * dim] = 0", hparams="dim: int >= 1") == []


def test_a_dim_problem_is_located_at_the_dim():
    text = "module m(dim: int >= 1) {\nstate A : [dim, -3] = 0\n}"
    checker = Checker(build(parse(text)), Source(text))
    check_shapes(checker)
    (problem,) = checker.problems
    assert (problem.line, problem.col, problem.end_col) == (2, 17, 19)


@pytest.mark.parametrize("heads", ["0", "2.5", "-1"])
def test_a_bad_head_count_leaves_widths_unsplit_instead_of_dividing_by_it(heads):
    """`nldsl check` printed a ZeroDivisionError for `heads 0`; check_frequencies reports the
    clause, and the shape check must not fail before it does."""
    body = (f"level memory every 1 token heads {heads} {{\n key k = x\n state M : [dim, dim] = 0\n"
            " M: minimize l2(M(k), k) by gd(0.1)\n read y = M(k)\n }\n out = y")
    assert messages(body, hparams="dim: int >= 1") == []
    with pytest.raises(nldsl.NLDSLError, match=f"heads must be a positive integer, got {heads}"):
        nldsl.load(f"module m(dim: int >= 1) {{\n{body}\n}}")


#: A `heads 2` level whose read nothing splits (`dim` is no multiple of 2): found by
#: tests/test_fuzz_task.py, an attention over another level's read projected by [2 * dim, dim].
UNSPLIT = """state Wo : [2 * dim, dim] = normal(0.5)
level a every 1 token { read h = tanh(x) }
level down every 1 token heads 2 {
  state M : [dim, dim] = 0
  key k = x
  value v = x @ Wv
  minimize -dot(M(k), v) by gd(lr = 0.1)
  read od = READ
}
out = od @ Wo"""


@pytest.mark.parametrize("read", [
    "attention(h, h, h)", "attention(x, k, k)", "tanh(x)", "k", "window_attention(h, x, x, 2)"])
def test_a_read_the_same_for_every_head_is_refused(read):
    """The checker sees every read of a `heads H` level merged, width H * d, and the runtime
    merges only a per-head value: `od @ Wo` passed here and raised torch's RuntimeError (mat1
    and mat2 shapes cannot be multiplied) when the module was compiled."""
    body = UNSPLIT.replace("READ", read)
    assert messages(body, hparams="dim: int = 3 >= 1") == [
        f"read 'od' of level 'down' (heads 2) is the same for every head: nothing in `{read}` is "
        "split by the heads"]
    with pytest.raises(nldsl.NLDSLError, match="is the same for every head"):
        nldsl.compile(f"module m(dim: int = 3 >= 1) {{\nstate Wv : [dim, dim] = normal(0.5)\n"
                      f"{body}\n}}")


@pytest.mark.parametrize("read", [
    "M(k)", "M(k) + x", "attention(x @ Wq, x @ Wq, x @ Wq)", "attention(h, h, q)", "q"])
def test_a_read_with_a_per_head_part_is_merged(read):
    """A state of the level, a context or an attention argument whose width splits (here
    heads * d = 2 * dim) make the read one per head, seen outside as width 2 * dim, as the
    runtime merges it."""
    body = "state Wq : [dim, 2 * dim]\n" + UNSPLIT.replace("READ", read).replace(
        "  key k = x\n", "  key k = x\n  query q = x @ Wq\n")
    assert messages(body, hparams="dim: int = 3 >= 1") == []
    m = nldsl.compile(f"module m(dim: int = 3 >= 1) {{\nstate Wv : [dim, dim] = normal(0.5)\n"
                      f"{body.replace('[dim, 2 * dim]', '[dim, 2 * dim] = normal(0.5)')}\n}}")
    assert m(torch.randn(1, 2, 3))[0].shape == (1, 2, 3)
