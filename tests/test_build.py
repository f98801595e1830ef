"""The builder: AST to LevelGraph, total on any parsed spec (valid or not)."""
from __future__ import annotations

import pytest

from nldsl.build import build
from nldsl.graph import OUTER
from nldsl.language.parser import parse

CMS = """
module cms(dim: int >= 1, period = 16 >= 1) {
  level slow every period tokens {
    state M2 : [dim, dim] = 0
    minimize l2(M2(x), x) by gd(lr = 0.01)
    read y2 = M2(x)
  }
  level mid every 4 tokens chunk 2 heads 2 partial drop {
    state M1 : [dim, dim] init learned
    minimize l2(M1(x), x) by gd(lr = 0.01)
    read y1 = M1(x)
  }
  level fast every 1 token {
    state M0 : [dim, dim] init learned by slow
    minimize l2(M0(x), x) by gd(lr = 0.01)
    read y0 = M0(x)
  }
  out = y0 + y1 + y2
}
"""


def graph(text):
    return build(parse(text))


@pytest.mark.parametrize("state, teacher", [("M2", None), ("M1", OUTER), ("M0", "slow")],
                         ids=["fixed-init", "default-outer", "explicit-by"])
def test_learned_by(state, teacher):
    """A module's plain `init learned` is `init learned by outer` (docs/language.md), as the
    module compiles it; the fuzzer found it taken for the next slower level, which refused
    it beside a level of the same period (tests/test_fuzz_task.py, FOUND)."""
    assert graph(CMS).state(state).learned_by == teacher


def test_init_edges_come_from_the_teacher():
    assert {(e.source, e.target, e.via) for e in graph(CMS).transfers("init")} == {
        (OUTER, "mid", ("M1",)), ("slow", "fast", ("M0",))}


def test_level_options_are_kept():
    mid = graph(CMS).levels["mid"]
    assert (mid.period, mid.partial, mid.backprop) == (4, "drop", False)
    assert (mid.chunk.value, mid.heads.value) == (2, 2)
    assert graph(CMS).levels["fast"].partial == "flush"  # the default


def test_period_from_hyper_parameter_default():
    assert graph(CMS).levels["slow"].period == 16


def test_period_is_none_when_not_constant():
    g = graph("module m(dim, p) {\n level a every p tokens { }\n}")
    assert g.levels["a"].period is None


def test_module_always_has_an_outer_level_first():
    g = graph(CMS)
    assert list(g.levels) == [OUTER, "slow", "mid", "fast"]
    assert g.levels[OUTER].implicit and g.levels[OUTER].unit == "step"


def test_optimizer_gets_an_outer_level_only_for_items_outside_levels():
    plain = graph("optimizer o(lr = 1) {\n level a every 1 step { W <- W - lr * grad(W) }\n}")
    assert OUTER not in plain.levels
    with_outer = graph("optimizer o(lr = 1) {\n state s like W = 0\n"
                       " level a every 1 step { W <- W - lr * s }\n}")
    assert list(with_outer.levels) == [OUTER, "a"]


def test_duplicates_keep_the_first_definition_and_never_fail():
    g = graph("optimizer o() {\n level a every 1 step { let h = 1\n let h = 2\n W <- W - h }\n"
              " level a every 2 steps { }\n}")
    assert list(g.levels) == ["a"] and g.levels["a"].contexts["h"].value.value == 1


def test_undefined_names_build_without_edges():
    g = graph("optimizer o() {\n level a every 1 step { W <- W - nowhere }\n}")
    assert g.transfers() == []


@pytest.mark.parametrize("text, depends", [
    pytest.param("level a every 1 step { state p like W = 0\n p <- grad(q) }\n"
                 "level b every 1 step { state q like W = 0\n q <- grad(W) }",
                 set(), id="grad-of-a-state-is-context"),
    pytest.param("level a every 1 step { state p like W = 0\n p <- q }\n"
                 "level b every 1 step { state q like W = 0\n q <- grad(W) }",
                 {"b"}, id="state-is-a-same-unit-dependency"),
    pytest.param("level a every 1 step { state p like W = 0\n p <- r }\n"
                 "level b every 1 step { state q like W = 0\n q <- grad(W)\n"
                 " read r = q before write }",
                 set(), id="read-before-write-is-context"),
    pytest.param("level a every 1 step { state p like W = 0\n p <- h }\n"
                 "level b every 1 step { let h = 2 * W\n W <- W - h }",
                 set(), id="context-and-given-parameter-are-not"),
])
def test_same_unit_dependencies(text, depends):
    g = graph("optimizer o() {\n" + text + "\n}")
    assert g.depends_on("a") == depends


@pytest.mark.parametrize("text, kind", [
    pytest.param("p <- q", "reads", id="update-reads"),
    pytest.param("read z = q", "reads", id="read-reads"),
    pytest.param("let z = q", "generates", id="context-generates"),
    pytest.param("p: minimize -dot(p, q) by gd(lr = 1)", "generates", id="objective-generates"),
    pytest.param("p <- grad(q)", "generates", id="gradient-generates"),
])
def test_edge_kind_follows_the_item(text, kind):
    g = graph("optimizer o() {\n level b every 1 step { state q like W = 0\n W <- W - q }\n"
              f" level a every 1 step {{ state p like W = 0\n {text} }}\n}}")
    assert {(e.source, e.target, e.kind) for e in g.transfers() if e.target == "a"} == {
        ("b", "a", kind)}


@pytest.mark.parametrize("spec, source", [
    pytest.param("module m(dim) {\n level s every 2 tokens { }\n level f every 1 token backprop { }\n}",
                 OUTER, id="module-joins-the-task-loss-flow"),
    pytest.param("optimizer o() {\n level s every 2 steps { }\n level f every 1 step backprop { }\n}",
                 "s", id="optimizer-joins-the-next-slower-level"),
])
def test_backprop_edge_source(spec, source):
    assert {(e.source, e.target) for e in graph(spec).transfers("backprop")} == {(source, "f")}


def test_references_walk_a_deep_tree_in_source_order_without_recursion():
    """A sum of N terms is a left tree N deep: recursive generators cost its depth per name
    (quadratic, issue 8 §3) and overflow the stack; the walk must do neither."""
    from nldsl.language import ast
    from nldsl.build import name_references

    depth = 5_000                      # beyond Python's default recursion limit
    tree = ast.Name(id="t0")
    for i in range(1, depth):
        tree = ast.Binary(op="+", left=tree, right=ast.Call(func="grad", args=[ast.Name(id=f"t{i}")]))
    found = list(name_references(tree))
    assert found == [("t0", False)] + [(f"t{i}", True) for i in range(1, depth)]
