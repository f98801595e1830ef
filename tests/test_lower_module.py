"""nldsl/lower/module.py: periods, chunks and heads are evaluated from the hyper-parameters
actually passed (not the defaults), chunk defaults are resolved, and every level comes out
with its head steps and placements."""
from __future__ import annotations

import pytest

from nldsl.errors import NLDSLError
from nldsl.lower.module import lower_module
from nldsl.lower.program import HeadMerge, HeadSplit
from nldsl.module.checks import resolve_hparams
from nldsl.spec import load

#: A two-level module whose period, chunk and heads are hyper-parameters.
PERIODIC = """module periodic(dim: int >= 1, n = 2 >= 1, c = 2 >= 1, h = 2 >= 1, hd = 2 >= 1) {
  state Wk : [dim, h * hd] = normal(0.02)
  state Wo : [h * hd, dim] = normal(0.02)
  level slow every n tokens chunk c heads h {
    state M : [hd, hd] = 0
    key k = x @ Wk
    minimize -dot(M(k), k) by gd(lr = 0.1)
    read y = M(k)
  }
  out = y @ Wo
}"""

NO_CHUNK = PERIODIC.replace(" chunk c", "")


def lowered(text, **given):
    spec = load(text)
    return lower_module(spec, resolve_hparams(spec, dict(dim=4) | given))


@pytest.mark.parametrize("text, given, period, chunk, heads", [
    pytest.param(PERIODIC, {}, 2, 2, 2, id="defaults"),
    pytest.param(PERIODIC, dict(n=3, c=6, h=4), 3, 6, 4, id="passed"),
    pytest.param(PERIODIC, dict(n=1, c=5), 1, 5, 2, id="chunk-over-period-1"),
    pytest.param(NO_CHUNK, dict(n=5), 5, 5, 2, id="chunk-defaults-to-period"),
    pytest.param(NO_CHUNK, dict(n=1, h=1), 1, 1, 1, id="one-head"),
])
def test_period_chunk_heads_are_ints_of_the_values_passed(text, given, period, chunk, heads):
    (level,) = lowered(text, **given).levels
    assert (level.period, level.chunk, level.heads) == (period, chunk, heads)
    assert all(type(v) is int for v in (level.period, level.chunk, level.heads))


def test_shapes_and_head_steps_follow_the_values_passed():
    program = lowered(PERIODIC, h=3, hd=5)
    (level,) = program.levels
    assert program.params["Wk"].shape == (4, 15)
    assert level.states["M"].shape == (5, 5)
    assert level.splits == (HeadSplit("k", 3, 5),)
    assert level.merges == (HeadMerge("y", 3, 5),)


def test_a_chunk_that_is_not_a_multiple_of_the_period_is_a_located_error():
    with pytest.raises(NLDSLError, match=r"chunk 4 of level 'slow' is not a multiple of its "
                                         r"period 3") as err:
        lowered(PERIODIC, n=3, c=4)
    assert err.value.problems[0].line == 4


@pytest.mark.parametrize("name, given, heads, head_dim", [
    pytest.param("deltanet", dict(dim=8), 4, 64, id="deltanet-defaults"),
    pytest.param("deltanet", dict(dim=8, heads=2, head_dim=3), 2, 3, id="deltanet-passed"),
    pytest.param("linear_attention", dict(dim=8, heads=1, head_dim=6), 1, 6, id="linear-1-head"),
])
def test_stdlib_levels_take_the_heads_passed(name, given, heads, head_dim):
    spec = load(name)
    (level,) = lower_module(spec, resolve_hparams(spec, given)).levels
    assert level.heads == heads
    assert level.states["M"].shape == (head_dim, head_dim)
    assert {s.name: (s.heads, s.width) for s in level.splits}["k"] == (heads, head_dim)
    assert [(m.read, m.merged) for m in level.merges] == [("y", heads * head_dim)]


def test_every_context_and_read_is_placed():
    spec = load("gated_deltanet")
    (level,) = lower_module(spec, resolve_hparams(spec, dict(dim=8))).levels
    assert set(level.placements) == set(level.contexts) | set(level.reads)


@pytest.mark.parametrize("declaration, shape", [
    pytest.param("state N like M = 0", (4, 4), id="like-a-fast-state"),
    pytest.param("state N like Wk = 0", (4, 4), id="like-an-outer-parameter"),
    pytest.param("state P : [dim] = 0\n    state N like P = 0", (4,), id="like-a-vector"),
])
def test_a_like_state_takes_the_shape_it_names(declaration, shape):
    text = """module likes(dim = 4) {
  state Wk : [dim, dim] = normal(0.5)
  level memory every 1 token {
    key k = x @ Wk
    state M : [dim, dim] = 0
    DECLARATION
    M: minimize -dot(M(k), x) by gd(0.1)
    read y = M(x)
  }
  out = y
}""".replace("DECLARATION", declaration)
    (level,) = lowered(text).levels
    assert level.states["N"].shape == shape
