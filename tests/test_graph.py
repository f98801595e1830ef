"""LevelGraph queries: edges by kind, owners, readers, frequency groups, update order."""
from __future__ import annotations

import pytest

from nldsl.build import build
from nldsl.graph import EDGE_KINDS, OUTER
from nldsl.language.parser import parse

HEAVY_BALL = """
optimizer heavy_ball(lr = 0.01 > 0, beta = 0.9 in [0, 1)) {
  level momentum every 1 step {
    key g = grad(W)
    state m like W = 0
    m: minimize -dot(m, g) by ema(beta)
  }
  level weights every 1 step {
    W <- W - lr * m
  }
}
"""

# Three frequencies (slow 4 steps, then two per-step levels) and a read before write.
MULTI = """
optimizer multi(lr = 0.01 > 0) {
  level slow every 4 steps {
    key g = grad(W)
    state s like W = 0
    s: minimize -dot(s, g) by gd(lr = 1)
    read s_old = s before write
  }
  level fast every 1 step {
    key g2 = grad(W)
    state f like W = 0
    f: minimize -dot(f, g2 + s_old) by gd(lr = 1)
  }
  level weights every 1 step {
    W <- W - lr * (f + s)
  }
}
"""

MEMORY = """
module memory(dim: int >= 1) {
  state Wk : [dim, dim] = normal(0.02)
  level memory every 1 token backprop {
    state M : [dim, dim] init learned
    key k = x @ Wk
    minimize l2(M(k), x) by gd(lr = 0.1)
    read y = M(k)
  }
  out = y
}
"""


def graph(text):
    return build(parse(text))


def edges(g, kind=None):
    return {(e.source, e.target, e.kind, e.via) for e in g.transfers(kind)}


def test_heavy_ball_edges():
    assert edges(graph(HEAVY_BALL)) == {
        ("weights", "momentum", "generates", ("W",)),  # grad(W): the weights generate gradients
        ("momentum", "weights", "reads", ("m",)),
    }


@pytest.mark.parametrize("kind, expected", [
    ("generates", {(OUTER, "memory", "generates", ("Wk",))}),
    ("init", {(OUTER, "memory", "init", ("M",))}),
    ("backprop", {(OUTER, "memory", "backprop", ("memory",))}),
    ("reads", {("memory", OUTER, "reads", ("y",))}),  # the module output belongs to `outer`
], ids=lambda v: v if isinstance(v, str) else "")
def test_module_edges_by_kind(kind, expected):
    assert edges(graph(MEMORY), kind) == expected


def test_edge_kinds_are_the_documented_four():
    assert EDGE_KINDS == ("reads", "generates", "init", "backprop")
    assert set(graph(MEMORY).graph.edges(keys=True)) == {
        (OUTER, "memory", "generates"), (OUTER, "memory", "init"),
        (OUTER, "memory", "backprop"), ("memory", OUTER, "reads")}


def test_edge_spans_point_at_the_item_that_uses_the_name():
    (edge,) = graph(HEAVY_BALL).transfers("reads")
    assert (edge.span.line, edge.span.col) == (9, 5)  # `W <- W - lr * m`


@pytest.mark.parametrize("name, owner", [
    ("g", "momentum"), ("m", "momentum"), ("W", "weights"), ("lr", None), ("nothing", None),
], ids=lambda v: str(v))
def test_owner(name, owner):
    assert graph(HEAVY_BALL).owner(name) == owner


def test_optimizer_parameter_is_an_implicit_state_of_the_level_that_writes_it():
    g = graph(HEAVY_BALL)
    w = g.state("W")
    assert (w.level, w.implicit) == ("weights", True)
    assert list(g.levels["weights"].states) == ["W"]
    assert [s.name for s in g.states()] == ["m", "W"]


def test_parameter_goes_to_the_first_level_when_no_level_writes_it():
    g = graph("optimizer o() {\n level a every 1 step { state m like W = 0 }\n"
              " level b every 1 step { }\n}")
    assert g.state("W").level == "a"


def test_state_lookup_of_an_unknown_name_raises_key_error():
    with pytest.raises(KeyError):
        graph(HEAVY_BALL).state("nope")


@pytest.mark.parametrize("state, readers", [("m", ["weights"]), ("W", ["momentum"]), ("g", [])],
                         ids=["m", "W", "g"])
def test_readers_of(state, readers):
    assert graph(HEAVY_BALL).readers_of(state) == readers


def test_levels_by_frequency_slowest_first():
    assert graph(MULTI).levels_by_frequency() == [["slow"], ["fast", "weights"]]


def test_step_levels_are_slower_than_token_levels():
    assert graph(MEMORY).levels_by_frequency() == [[OUTER], ["memory"]]


@pytest.mark.parametrize("level, depends", [
    ("weights", {"fast", "slow"}),  # reads both states after their writes
    ("fast", set()),                # `s_old` is read before write; grad(W) is context
    ("slow", set()),
], ids=lambda v: v if isinstance(v, str) else "")
def test_depends_on(level, depends):
    assert graph(MULTI).depends_on(level) == depends


def test_update_order_fast_first_then_dependencies():
    assert graph(MULTI).update_order() == ["fast", "weights", "slow"]
    assert graph(HEAVY_BALL).update_order() == ["momentum", "weights"]


def test_update_order_ties_put_inner_levels_first():
    # no dependency between a and b: the later-declared (inner, faster) one writes first
    g = graph("optimizer o(lr = 1) {\n level a every 1 step { state p like W = 0\n"
              " p <- grad(W) }\n level b every 1 step { W <- W - lr * grad(W) }\n}")
    assert g.depends_on("b") == set() and g.update_order() == ["b", "a"]


def test_frequency_metadata():
    g = graph(MULTI)
    slow = g.levels["slow"]
    assert (slow.period, slow.unit, slow.rank) == (4, "step", (1, 4))
    assert slow.frequency_label() == "every 4 steps"
    assert graph(MEMORY).levels[OUTER].implicit


def test_repr_names_kind_and_levels():
    assert repr(graph(HEAVY_BALL)) == "LevelGraph(optimizer heavy_ball: momentum, weights)"
