"""nldsl/render/nesting.py: slower outside faster; chains nest, independent branches do not."""
from __future__ import annotations

import pytest

import nldsl
from nldsl.render.nesting import ancestors, children, parents

SEQUENTIAL = """module seq(dim: int >= 1) {
  level slow every 16 tokens backprop {
    state A : mlp(dim -> dim) init learned
    minimize task by gd(lr = 0.1)
    read a = A(x)
  }
  level fast every 1 token backprop {
    state B : mlp(dim -> dim) init learned
    minimize task by gd(lr = 0.1)
    read b = B(a)
  }
  out = b
}"""
INDEPENDENT = SEQUENTIAL.replace("read b = B(a)", "read b = B(x)").replace("out = b",
                                                                          "out = a + b")
SAME_FREQUENCY = """optimizer twin(lr = 0.1) {
  level weights every 1 step {
    W <- W - lr * (m + v)
  }
  level first every 1 step {
    state m like W = 0
    m: minimize -dot(m, grad(W)) by ema(0.9)
  }
  level second every 1 step {
    state v like W = 0
    v: minimize -dot(v, grad(W) * grad(W)) by ema(0.99)
  }
}"""


@pytest.mark.parametrize("text, expected", [
    (SEQUENTIAL, {"outer": None, "slow": "outer", "fast": "slow"}),
    (INDEPENDENT, {"outer": None, "slow": "outer", "fast": "outer"}),
    (SAME_FREQUENCY, {"weights": None, "first": "weights", "second": "weights"}),
], ids=["sequential-chain-nests", "independent-branches-side-by-side", "same-frequency-siblings"])
def test_parents(text, expected):
    assert parents(nldsl.load(text).graph) == expected


@pytest.mark.parametrize("name, level, enclosing", [
    ("adam", "moments", ["weights"]),
    ("titans", "memory", ["outer"]),
    ("cms", "fast", ["mid", "slow", "outer"]),
    ("cms_nested", "fast", ["mid", "slow", "outer"]),
    ("cms_independent", "fast", ["outer"]),
    ("hope", "cms_fast", ["cms_mid", "cms_slow", "outer"]),
    ("hope", "memory", ["outer"]),
    ("m3", "fast", ["weights", "slow"]),
])
def test_stdlib_nesting(name, level, enclosing):
    assert ancestors(nldsl.load(name).graph, level) == enclosing


@pytest.mark.parametrize("name", ["adam", "muon", "m3", "titans", "cms", "cms_nested",
                                  "cms_independent", "hope"])
def test_never_a_slower_level_inside_a_faster_one(name):
    graph = nldsl.load(name).graph
    for level, parent in parents(graph).items():
        if parent is not None:
            assert graph.levels[parent].rank >= graph.levels[level].rank


def test_children_put_upstream_siblings_first():
    """Hope: the projections feed the memory, whose output feeds the CMS chain."""
    graph = nldsl.load("hope").graph
    tree = children(graph)
    assert tree[None] == ["outer"]
    assert tree["outer"] == ["projections", "memory", "cms_slow"]
    assert sorted(n for kids in tree.values() for n in kids) == sorted(graph.levels)
