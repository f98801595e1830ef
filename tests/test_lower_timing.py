"""nldsl/lower/timing.py: which level writes at which unit, and the stage within a token at
which each context and read of a module level is evaluated (`placements`)."""
from __future__ import annotations

import pytest

from nldsl.lower import timing
from nldsl.lower.module import lower_module
from nldsl.lower.program import AFTER_WRITE, BEFORE_WRITE, BEFORE_WRITES, INPUT, SNAPSHOT, \
    Placement
from nldsl.module.checks import resolve_hparams
from nldsl.spec import load


@pytest.mark.parametrize("every, window, units", [
    pytest.param(1, 4, [1, 2, 3, 4], id="every-1"),
    pytest.param(3, 10, [3, 6, 9], id="every-3"),
    pytest.param(2.0, 4, [2, 4], id="whole-float"),
])
def test_write_units(every, window, units):
    assert list(timing.write_units(every, window)) == units
    assert [u for u in range(1, window + 1) if timing.writes_at(every, u)] == units


@pytest.mark.parametrize("every", [0, 2.5, True, "2", float("nan")])
def test_a_period_that_is_no_positive_whole_number_is_refused(every):
    with pytest.raises(ValueError, match="positive whole number"):
        timing.period(every)


#: `memory` (chunk 4) has an input key, a let on another level's state, a let on its own state,
#: a before-write read and a read that uses another level's read.
TWO_LEVELS = """module two(dim: int >= 1) {
  state Wk : [dim, dim] = normal(0.02)
  level memory every 1 token chunk 4 {
    state M : [dim, dim] = 0
    key k2 = x @ Wk
    let p = A(k2)
    let own = M(k2)
    minimize l2(M(k2), own * 0.5 + p) by gd(lr = 0.1)
    read y = M(k2) before write
    read y2 = M(k2) + z
  }
  level fast every 1 token {
    state A : [dim, dim] = 0
    key k = x @ Wk
    minimize -dot(A(k), k) by gd(lr = 0.1)
    read z = A(k)
  }
  out = y + y2
}"""


def placed(text, **given):
    spec = load(text)
    program = lower_module(spec, resolve_hparams(spec, given))
    return {level.name: level.placements for level in program.levels}


@pytest.mark.parametrize("level, name, placement", [
    pytest.param("memory", "k2", Placement(INPUT), id="input"),
    pytest.param("memory", "p", Placement(BEFORE_WRITES, ("A",), ("k2",)), id="other-state"),
    pytest.param("memory", "own", Placement(SNAPSHOT, ("M",), ("k2",)), id="own-state"),
    pytest.param("memory", "y", Placement(BEFORE_WRITE, ("M",), ("k2",)), id="before-write"),
    pytest.param("memory", "y2", Placement(AFTER_WRITE, ("A", "M"), ("k", "k2")),
                 id="through-a-read"),
    pytest.param("fast", "z", Placement(AFTER_WRITE, ("A",), ("k",)), id="plain-read"),
])
def test_placements(level, name, placement):
    assert placed(TWO_LEVELS, dim=3)[level][name] == placement


def test_a_read_uses_contexts_evaluated_before_the_write():
    placements = placed("deltanet", dim=8)["memory"]
    assert placements["y"] == Placement(AFTER_WRITE, ("M",), ("q",))
    assert placements["q"].stage == INPUT
