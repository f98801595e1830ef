"""What a generated step computes before its first write (nldsl/optim/snapshot.py)."""
from __future__ import annotations

import pytest

import nldsl
from nldsl.optim.plan import lower
from nldsl.optim.printer import Printer
from nldsl.lower.emit import Emitter
from nldsl.optim.snapshot import snapshot

SPEC = """
optimizer s(lr = 0.1 > 0) {
  level weights every 1 step {
    W <- W - lr * (m - a) - lr * b - lr * c
  }
  level moments every 1 step {
    key g = grad(W)
    let a = m
    let b = transpose(W)
    let c = 2 * r
    state m like W = 0
    m: minimize -dot(m, g) by ema(0.9)
    read r = m
  }
}
"""


@pytest.fixture(scope="module")
def lines() -> dict[str, str]:
    plan = lower(nldsl.load(SPEC))
    tensors = {"W", "grad", "m", "g", "a", "b", "c", "r"}
    out = snapshot_lines(plan, Printer(tensors, foreach=False), foreach=False)  # per tensor
    return {line.split(" = ")[0].strip().removeprefix("u_"): line.split(" = ", 1)[1] for line in out}


def snapshot_lines(plan, printer: Printer, foreach: bool) -> list[str]:
    """The snapshot as the lines of a step function's body."""
    out = Emitter()
    with out.block():
        snapshot(out, plan, printer, foreach)
    return out.text().splitlines()


def test_a_state_or_a_view_of_one_is_copied(lines):
    assert lines["a"] == "u_m.clone()"
    assert lines["b"].endswith(".clone()") and "u_W" in lines["b"]


def test_a_plain_read_used_by_a_context_is_taken_before_the_writes(lines):
    order = list(lines)
    assert "r" in lines and order.index("r") < order.index("c")


def test_a_computed_context_is_not_copied(lines):
    assert "clone" not in lines["g"] and "clone" not in lines["c"]


def test_foreach_code_copies_each_tensor_of_an_aliased_state():
    plan = lower(nldsl.load(SPEC.replace("transpose(W)", "W")))
    out = snapshot_lines(plan, Printer({"W", "grad", "m", "g", "a", "b", "c", "r"}, foreach=True),
                         foreach=True)
    assert "    u_a = [t.clone() for t in u_m]" in out and "    u_b = [t.clone() for t in u_W]" in out
