"""check_names: duplicates, unknown names and functions, arity, `task`, definition cycles."""
from __future__ import annotations

import pytest

from nldsl.build import build
from nldsl.language.builtins import FUNCTIONS
from nldsl.validation.common import Checker
from nldsl.validation.names import (check_definition_cycles, check_duplicates, check_references,
                               rotate_to_first)
from nldsl.errors import Source
from nldsl.language.parser import parse


def run(check, body: str, kind: str = "optimizer", hparams: str = "lr = 0.1, beta = 0.9"):
    text = f"{kind} s({hparams}) {{\n{body}\n}}"
    checker = Checker(build(parse(text)), Source(text))
    check(checker)
    return [(p.message, p.hint) for p in checker.problems]


def messages(check, body, **kw):
    return [m for m, _ in run(check, body, **kw)]


VALID = [
    pytest.param("level a every 1 step { key g = grad(W)\n state m like W = 0\n"
                 " m: minimize -dot(m, g) by ema(beta) }\n level b every 1 step { W <- W - lr * m }",
                 "optimizer", id="heavy-ball"),
    pytest.param("state Wk : [dim, dim]\n level a every 1 token { state M : [dim, dim] = 0\n"
                 " key k = l2norm(x @ Wk)\n minimize l2(M(k), x) by gd(lr = 0.1)\n"
                 " read y = M(k) }\n out = y * t", "module", id="memory"),
    pytest.param("level a every 1 step { W: minimize task by gd(lr) }", "optimizer",
                 id="task-as-objective"),
    pytest.param("level a every 1 step { W <- W - lr * clamp(grad(W), -1, 1) * step }",
                 "optimizer", id="builtins"),
]


@pytest.mark.parametrize("body, kind", VALID)
@pytest.mark.parametrize("check", [check_duplicates, check_references, check_definition_cycles],
                         ids=["duplicates", "references", "cycles"])
def test_valid_specs_have_no_problems(check, body, kind):
    hparams = "dim" if kind == "module" else "lr = 0.1, beta = 0.9"
    assert run(check, body, kind=kind, hparams=hparams) == []


@pytest.mark.parametrize("body, expected", [
    pytest.param("level a every 1 step { state m like W\n state m like W }",
                 "state 'm' is defined twice", id="state"),
    pytest.param("level a every 1 step { let h = 1\n key h = 2 }", "key 'h' is defined twice",
                 id="context"),
    pytest.param("level a every 1 step { }\n level a every 1 step { }",
                 "level 'a' is defined twice", id="level"),
    pytest.param("level a every 1 step { let lr = 1 }", "let 'lr' is defined twice",
                 id="shadows-hyper-parameter"),
    pytest.param("level a every 1 step { let sqrt = 1 }", "let 'sqrt' shadows a built-in name",
                 id="shadows-function"),
    pytest.param("level a every 1 step { state W like W }", "state 'W' shadows a built-in name",
                 id="shadows-parameter"),
    pytest.param("level a every 1 step { let task = 1 }", "let 'task' shadows a built-in name",
                 id="shadows-task"),
])
def test_duplicates(body, expected):
    assert messages(check_duplicates, body) == [expected]


@pytest.mark.parametrize("body, expected", [
    pytest.param("level a every 1 step { W <- W - lr * bta }",
                 ("unknown name 'bta'", "did you mean 'beta'?"), id="suggestion"),
    pytest.param("level a every 1 step { W <- W - zzz }",
                 ("unknown name 'zzz'", "define it (e.g. `let name = ...`) or declare it as a "
                  "hyper-parameter"), id="no-suggestion"),
    pytest.param("level a every 1 step { W <- W - lr * rsqrt(W) }",
                 ("unknown function 'rsqrt'", "did you mean 'sqrt'?"), id="unknown-function"),
    pytest.param("level a every 1 step { W <- W - lr(W) }",
                 ("'lr' is not a memory state, so it cannot be applied to an input",
                  "only states with a tensor or mlp shape can be applied, e.g. `M(k)`"),
                 id="not-a-memory"),
])
def test_unknown_names(body, expected):
    assert run(check_references, body) == [expected]


@pytest.mark.parametrize("call, expected", [
    ("clamp(W, 1)", "clamp() takes 3 arguments, got 2"),
    ("sqrt(W, W)", "sqrt() takes 1 argument, got 2"),
    ("newton_schulz()",
     f"newton_schulz() takes 1 to {len(FUNCTIONS['newton_schulz'].params)} arguments, got 0"),
    ("concat()", "concat() takes at least 1 argument, got 0"),
    ("normal(std = 1, mean = 0)", "normal() has no argument 'mean'"),
], ids=["clamp", "sqrt", "optional-args", "variadic", "unknown-keyword"])
def test_builtin_arity(call, expected):
    assert expected in messages(check_references, f"level a every 1 step {{ W <- W - {call} }}")


def test_memory_takes_exactly_one_input():
    body = "state M : [d, d]\n level a every 1 step { W <- M(W, W) }"
    assert messages(check_references, body, hparams="d") == ["M() takes exactly 1 argument, got 2"]


def test_task_outside_an_objective():
    assert messages(check_references, "level a every 1 step { W <- W - task }") == [
        "`task` (the outer loss) can only be an objective"]


def test_scalar_state_cannot_be_applied():
    body = "level a every 1 step { state s : scalar = 1\n W <- W - s(W) }"
    assert messages(check_references, body) == [
        "'s' is not a memory state, so it cannot be applied to an input"]


@pytest.mark.parametrize("body, path", [
    ("let a = b\n let b = a", "a -> b -> a"),
    ("let b = a\n let a = b", "b -> a -> b"),
    ("let a = a + 1", "a -> a"),
    ("let a = b\n let b = c\n let c = a", "a -> b -> c -> a"),
], ids=["pair", "pair-declared-the-other-way", "self", "triangle"])
def test_cycles_are_reported_once_from_the_first_definition(body, path):
    found = messages(check_definition_cycles, f"level l every 1 step {{ {body}\n W <- W }}")
    assert found == [f"definitions form a cycle: {path}"]


def test_rotate_to_first():
    assert rotate_to_first(["c", "a", "b"], ["a", "b", "c"]) == ["a", "b", "c"]


# ---------------------------------------------------------------- issue 8 §6

@pytest.mark.parametrize("hparams, expected", [
    pytest.param("lr = 0.1 >= undefined_x", "unknown name 'undefined_x'", id="bound"),
    pytest.param("lr = 0.1 in [lo, 1]", "unknown name 'lo'", id="interval-low"),
    pytest.param("lr = 0.1 in [0, hi)", "unknown name 'hi'", id="interval-high"),
    pytest.param('mode = "a" in {"a", other}', "unknown name 'other'", id="choice"),
])
def test_an_unknown_name_in_a_constraint_is_reported(hparams, expected):
    assert messages(check_references, "level a every 1 step { W <- W - 0.1 * grad(W) }",
                    hparams=hparams) == [expected]


@pytest.mark.parametrize("name", ["step", "W", "g"])
def test_a_constraint_names_only_hyper_parameters(name):
    body = "level a every 1 step { let g = grad(W)\n W <- W - 0.1 * g }"
    assert run(check_references, body, hparams=f"lr = 0.1 > {name}") == [
        (f"a constraint can name only hyper-parameters, and {name!r} is none",
         f"declare {name!r} as a hyper-parameter, or write a number")]


def test_a_constraint_may_name_another_hyper_parameter():
    body = "level a every 1 step { W <- W - lr * grad(W) }"
    assert run(check_references, body, hparams="lo = 0, lr = 0.1 > lo") == []


@pytest.mark.parametrize("body, expected", [
    pytest.param("state m like Q = 0", ("state 'm' is shaped `like Q`, but 'Q' is not a state",
                                        "declare that state, or give this one a shape of its own "
                                        "(`[d, d]`, `mlp(...)`, `scalar`)"), id="unknown"),
    pytest.param("state m like Wx = 0", ("state 'm' is shaped `like Wx`, but 'Wx' is not a state",
                                         "did you mean 'W'?"), id="suggestion"),
    pytest.param("state m like lr = 0", ("state 'm' is shaped `like lr`, but 'lr' is not a state",
                                         "declare that state, or give this one a shape of its own "
                                         "(`[d, d]`, `mlp(...)`, `scalar`)"), id="hyper-parameter"),
    pytest.param("state m like m = 0", ("state shapes refer to each other in a circle: m -> m",
                                        "give one of these states a shape (`like W`, `[d, d]`, "
                                        "`scalar`)"), id="itself"),
    pytest.param("state a like b = 0\n state b like a = 0",
                 ("state shapes refer to each other in a circle: a -> b -> a",
                  "give one of these states a shape (`like W`, `[d, d]`, `scalar`)"), id="circle"),
])
def test_like_names_a_state(body, expected):
    assert run(check_references, f"level a every 1 step {{ {body}\n W <- W }}") == [expected]


def test_like_another_state_is_fine():
    body = "level a every 1 step { state m like W = 0\n state v like m = 0\n W <- W - m - v }"
    assert run(check_references, body) == []


def test_suggestions_stop_when_the_spec_s_budget_is_spent(monkeypatch):
    """N unknown names among N definitions would cost N * N comparisons (47 s for 10,000):
    suggestions stop after SUGGESTION_BUDGET comparisons, and the rest keep the generic hint."""
    monkeypatch.setattr("nldsl.validation.common.SUGGESTION_BUDGET", 10_000)
    text = "optimizer s() { level a every 1 step { W <- W } }"
    checker = Checker(build(parse(text)), Source(text))
    candidates = {f"alpha{i}" for i in range(1000)}
    hints = [checker.suggest("alpha1x", candidates) for _ in range(13)]
    assert hints == ["did you mean 'alpha1'?"] * 10 + [None] * 3


def test_many_unknown_names_are_all_reported():
    lets = "\n".join(f" let a{i} = u{i}" for i in range(500))
    body = f"level a every 1 step {{ W <- W - 0.1 * grad(W)\n{lets} }}"
    found = run(check_references, body)
    assert [m for m, _ in found] == [f"unknown name 'u{i}'" for i in range(500)]
