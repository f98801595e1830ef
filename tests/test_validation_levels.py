"""check_levels: periods and units, slow-to-fast order, nesting, same-unit conflicts, learned
initial states, what each objective and update acts on."""
from __future__ import annotations

import pytest

from nldsl.build import build
from nldsl.validation.common import Checker
from nldsl.validation.levels import check_frequencies, check_learned_inits, check_objectives, \
    check_once
from nldsl.errors import Source
from nldsl.language.parser import parse
from nldsl.testing import EXAMPLE_SPECS


def run(check, text: str) -> list:
    checker = Checker(build(parse(text)), Source(text))
    check(checker)
    return checker.problems


def messages(check, text):
    return [p.message for p in run(check, text)]


def opt(body: str, hparams: str = "lr = 0.1, f = 4") -> str:
    return f"optimizer o({hparams}) {{\n{body}\n}}"


def mod(body: str) -> str:
    return f"module m(dim, p = 4) {{\n{body}\n}}"


ALL_CHECKS = [check_frequencies, check_learned_inits, check_objectives]


@pytest.mark.parametrize("name", sorted(EXAMPLE_SPECS))
@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda f: f.__name__)
def test_examples_have_no_level_problems(check, name):
    assert messages(check, EXAMPLE_SPECS[name]) == []


@pytest.mark.parametrize("text, expected", [
    pytest.param(opt("level a every 0 steps { W <- W }"),
                 ["a level's period must be a positive integer, got 0"], id="zero-period"),
    pytest.param(opt("level a every f / 8 steps { W <- W }"),
                 ["a level's period must be a positive integer, got 0.5"], id="fraction-from-hparam"),
    pytest.param(mod("level a every 1 token chunk 0 { }"),
                 ["chunk must be a positive integer, got 0"], id="zero-chunk"),
    pytest.param(mod("level a every 1 token heads 1.5 { }"),
                 ["heads must be a positive integer, got 1.5"], id="fractional-heads"),
    pytest.param(opt("level a every 1 step chunk 4 { W <- W }"),
                 ["`chunk` applies to per-token levels only"], id="chunk-on-steps"),
    pytest.param(opt("level a every 1 step heads 2 { W <- W }"),
                 ["`heads` applies to per-token levels only"], id="heads-on-steps"),
    pytest.param(opt("level a every 1 token { W <- W }"),
                 ["optimizer levels count steps, not tokens"], id="tokens-in-optimizer"),
    pytest.param(mod("level a every 1 step { }"),
                 ["module levels count tokens, not steps"], id="steps-in-module"),
    pytest.param(opt("level a every 1 step { W <- W }\n level b every f steps { }"),
                 ["levels are listed slow to fast, but 'a' (every 1 step) comes before the "
                  "slower 'b' (every f steps)"], id="out-of-order"),
    pytest.param(mod("level a every 6 tokens { }\n level b every 4 tokens { }"),
                 ["periods do not nest: 'a' writes every 6 tokens and 'b' every 4"],
                 id="no-nesting"),
])
def test_frequency_problems(text, expected):
    assert messages(check_frequencies, text) == expected


@pytest.mark.parametrize("text", [
    pytest.param(mod("level a every 16 tokens { }\n level b every p tokens { }\n"
                     " level c every 1 token chunk 8 heads 2 { }"), id="nested-periods"),
    pytest.param(opt("level a every f steps { }\n level b every 1 step { W <- W }"),
                 id="period-from-hparam"),
    pytest.param(mod("level a every q tokens { }"), id="unknown-period-is-not-judged"),
])
def test_valid_frequencies(text):
    assert messages(check_frequencies, text) == []


def test_unit_problem_points_at_the_number_and_unit():
    (problem,) = run(check_frequencies, opt("level a every 1 token { W <- W }"))
    assert (problem.line, problem.col, problem.end_col) == (2, 15, 22)  # `1 token`


def test_conflict_is_a_path_from_the_first_declared_level():
    text = opt("level a every 1 step { state p like W = 0\n p <- q }\n"
               " level b every 1 step { state q like W = 0\n q <- p\n W <- W - q }")
    assert messages(check_frequencies, text) == [
        "frequency conflict: these levels need each other's state in the same unit: a -> b -> a"]


@pytest.mark.parametrize("text", [
    pytest.param(opt("level a every 1 step { state p like W = 0\n p <- grad(W) }\n"
                     " level b every 1 step { state q like W = 0\n q <- p\n W <- W - q }"),
                 id="one-direction"),
    pytest.param(opt("level a every 1 step { state p like W = 0\n p <- q\n"
                     " read p0 = p before write }\n"
                     " level b every 1 step { state q like W = 0\n q <- p0\n W <- W - q }"),
                 id="read-before-write-breaks-it"),
    pytest.param(opt("level a every f steps { state p like W = 0\n p <- q }\n"
                     " level b every 1 step { state q like W = 0\n q <- p\n W <- W - q }"),
                 id="different-frequencies"),
])
def test_no_conflict(text):
    assert messages(check_frequencies, text) == []


@pytest.mark.parametrize("text, expected", [
    pytest.param(opt("level a every 1 step { state m like W init learned\n W <- W - m }"),
                 ["state 'm' has a learned initial state but no slower level learns it"],
                 id="no-slower-level"),
    pytest.param(mod("level a every 4 tokens { state M : [dim, dim] init learned by b }\n"
                     " level b every 1 token { }"),
                 ["state 'M' is learned by 'b', which is not a slower level"], id="faster-teacher"),
    pytest.param(mod("level a every 4 tokens { }\n level b every 4 tokens {"
                     " state M : [dim, dim] init learned by a }"),
                 ["state 'M' is learned by 'a', which is not a slower level"], id="same-frequency"),
    # a module's plain `init learned` is the outer level's, whatever the levels before it
    pytest.param(mod("level a every 4 tokens { }\n level b every 4 tokens {"
                     " state M : [dim, dim] init learned }"), [], id="plain-is-outer"),
    pytest.param(mod("level a every 1 token { state M : [dim, dim] init learned by nope }"),
                 ["unknown level 'nope'"], id="unknown-teacher"),
])
def test_learned_init_problems(text, expected):
    assert messages(check_learned_inits, text) == expected


@pytest.mark.parametrize("text", [
    pytest.param(mod("level a every 1 token { state M : [dim, dim] init learned }"),
                 id="outer-level-learns-it"),
    pytest.param(mod("level a every 4 tokens { }\n level b every 1 token {"
                     " state M : [dim, dim] init learned by a }"), id="explicit-slower"),
])
def test_valid_learned_inits(text):
    assert messages(check_learned_inits, text) == []


@pytest.mark.parametrize("text, expected", [
    pytest.param(opt("level a every 1 step { key g = grad(W)\n state m like W = 0\n"
                     " m: minimize dot(g, g) by ema(0.9) }\n level b every 1 step { W <- W - m }"),
                 ["the objective does not depend on 'm', the state it trains"], id="no-state"),
    pytest.param(opt("level a every 1 step { state m like W = 0\n state v like W = 0\n"
                     " minimize dot(m, v) by gd(lr) }\n level b every 1 step { W <- W - m }"),
                 ["level 'a' has 2 states; say which one this objective trains"],
                 id="which-state"),
    pytest.param(opt("level a every 1 step { state m like W = 0 }\n"
                     " level b every 1 step { m: minimize dot(m, W) by gd(lr)\n W <- W - m }"),
                 ["'m' is not a state of level 'b'"], id="objective-of-other-level"),
    pytest.param(opt("level a every 1 step { state m like W = 0 }\n"
                     " level b every 1 step { m <- m + 1\n W <- W - m }"),
                 ["'m' is not a state of level 'b' (it belongs to level 'a')"],
                 id="update-of-other-level"),
    pytest.param(opt("level a every 1 step { state m like W = 0\n m <- grad(W) }"),
                 ["this optimizer never updates the parameter `W`"], id="never-updates-W"),
])
def test_objective_problems(text, expected):
    assert messages(check_objectives, text) == expected


@pytest.mark.parametrize("text", [
    pytest.param(opt("level a every 1 step { W: minimize task by gd(lr) }"), id="task"),
    pytest.param(opt("level a every 1 step { minimize task by gd(lr) }"),
                 id="single-state-is-W"),
    pytest.param(opt("level a every 1 step { state m like W = 0\n"
                     " let w = 2 * m\n m: minimize dot(w, grad(W)) by gd(lr) }\n"
                     " level b every 1 step { W <- W - m }"), id="through-a-definition"),
])
def test_valid_objectives(text):
    assert messages(check_objectives, text) == []


ONCE = ("module s(dim) {{\n level a every 2 tokens once {{\n  state M : [dim, dim] = 0\n"
        "  {body}\n  read y = M(x)\n }}\n out = y\n}}")


@pytest.mark.parametrize("body", [
    "minimize l2(M(x), x) by gd(lr = 0.1)",
    "minimize l2(M(x), x) by momentum(lr = 0.1, beta = 0.9)",
    "minimize l2(M(x), x) by ema(beta = 0.9)",
], ids=["gd", "momentum", "ema"])
def test_once_takes_gd_momentum_or_ema(body):
    assert run(check_once, ONCE.format(body=body)) == []


@pytest.mark.parametrize("body, message, col", [
    ("minimize l2(M(x), x) by dgd(lr = 0.1)", "`dgd` in the `once` level 'a'", 27),
    ("M <- 0.5 * M", "an explicit update in the `once` level 'a'", 3),
], ids=["dgd", "explicit-update"])
def test_once_refuses_what_has_no_summed_gradient(body, message, col):
    assert [(p.message, p.line, p.col) for p in run(check_once, ONCE.format(body=body))] == \
        [(message, 4, col)]


def test_once_on_a_step_level_is_located():
    text = ("optimizer o(lr = 0.1) {\n level a every 2 steps once {\n  state m like W = 0\n"
            "  minimize l2(m, W) by gd(lr)\n }\n}")
    assert [(p.message, p.line, p.col) for p in run(check_once, text)] == [
        ("level 'a' is `once`, but only token levels take one step per period", 2, 2)]
