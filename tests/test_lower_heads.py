"""nldsl/lower/heads.py: the head split and merge of a `heads H` level, computed from the
lowered shapes, agree with what the runtime's Frame does to the tensors (the reference checks
every split and merge it applies, so running it is the agreement test)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from nldsl.lower import heads
from nldsl.lower.module import lower_module
from nldsl.lower.program import HeadMerge, HeadSplit
from nldsl.module import compile as compile_module
from nldsl.module.checks import resolve_hparams
from nldsl.module.reference import run_reference
from nldsl.runtime import evaluate
from nldsl.spec import load

#: heads 2 of width 3; the gate `g` has width 3, not a multiple of 2: it is shared by the heads.
MIXED = """module mixed(dim: int >= 1, h = 2 >= 1, hd = 3 >= 1) {
  state Wk : [dim, h * hd] = normal(0.02)
  state Wb : [dim, h] = normal(0.02)
  state Wg : [dim, hd] = normal(0.02)
  state A : [h] = 0
  state Wo : [h * hd, dim] = normal(0.02)
  level memory every 1 token heads h {
    state M : [hd, hd] = 0
    key   k = x @ Wk
    key   kn = l2norm(x @ Wk)
    gate  b = sigmoid(x @ Wb)
    gate  a = exp(-exp(A))
    gate  g = sigmoid(x @ Wg)
    minimize l2(M(kn), k) by gd(lr = b, decay = a)
    read y = M(kn) * g
    read n = dot(M(kn), k)
  }
  out = y @ Wo
}"""


def level_of(text, **given):
    spec = load(text)
    program = lower_module(spec, resolve_hparams(spec, dict(dim=4) | given))
    return program, program.levels[0]


def test_splits_name_each_context_entering_the_heads():
    _, level = level_of(MIXED)
    assert level.splits == (HeadSplit("k", 2, 3), HeadSplit("kn", 2, 3), HeadSplit("b", 2, None),
                            HeadSplit("a", 2, None))


def test_a_context_whose_width_is_not_a_multiple_of_the_heads_is_shared():
    _, level = level_of(MIXED)
    assert "g" not in {s.name for s in level.splits}


def test_merges_name_each_per_head_read():
    _, level = level_of(MIXED)
    assert level.merges == (HeadMerge("y", 2, 3), HeadMerge("n", 2, None))
    assert [m.merged for m in level.merges] == [6, 2]


def test_one_head_still_splits_a_gate_to_a_scalar():
    _, level = level_of(MIXED, h=1, hd=4)
    assert HeadSplit("b", 1, None) in level.splits
    assert HeadSplit("k", 1, 4) in level.splits


def test_a_level_without_heads_has_no_head_steps():
    spec = load("examples/deltanet_recurrence.nl")
    values = resolve_hparams(spec, dict(dim=8, head_dim=4))
    program = lower_module(spec, values)
    for level in program.levels:
        if level.heads is None:
            assert (level.splits, level.merges) == ((), ())


@pytest.mark.parametrize("given", [dict(), dict(h=3, hd=3), dict(h=1, hd=3)],
                         ids=["2x3", "3x3", "1x3"])
def test_the_reference_applies_and_checks_them(given):
    torch.manual_seed(0)
    module = compile_module(load(MIXED), schedule="reference", dim=4, **given)
    y, _ = module(torch.randn(2, 5, 4))
    assert y.shape == (2, 5, 4)


@pytest.mark.parametrize("steps, name", [
    pytest.param("splits", "lowered head split of 'k'", id="split"),
    pytest.param("merges", "lowered head merge of 'y'", id="merge"),
])
def test_a_wrong_head_step_width_is_caught_by_the_runtime(steps, name):
    module = compile_module(load(MIXED), schedule="reference", dim=4)
    level = module.program.levels[0]
    first, *rest = getattr(level, steps)
    wrong = 2 if steps == "splits" else 1
    broken = replace(level, **{steps: (replace(first, width=wrong), *rest)})
    program = replace(module.program, levels=[broken])
    with pytest.raises(RuntimeError, match=name):
        run_reference(program, dict(module.named_parameters()), torch.randn(1, 2, 4),
                      module.initial_state(1))


def test_every_builtin_the_runtime_computes_has_a_width_rule():
    rules = heads.SAME | heads.LAST_TO_ONE | heads.REDUCE_ALL | heads.SCALAR | heads.ATTENTION | {
        "conv", "transpose", "trace", "max", "min", "clamp", "outer", "concat", "wsum",
        "flatten"}
    computed = evaluate.COMPUTED
    assert computed <= rules


@pytest.mark.parametrize("schedule", ["reference", "chunked"])
def test_construction_checks_the_head_steps_whatever_the_schedule(schedule, monkeypatch):
    """linear_attention has no conv: the probe token runs for the head check alone."""
    import nldsl.lower.module as lowering

    def wrong(level, program):
        splits, merges = heads.head_steps(level, program)
        return tuple(replace(s, width=(s.width or 1) + 1) for s in splits), merges

    monkeypatch.setattr(lowering, "head_steps", wrong)
    with pytest.raises(RuntimeError, match="lowered head split"):
        compile_module("linear_attention", schedule=schedule, dim=4, heads=2, head_dim=3)


#: head_dim 1: a width h * 1 is both h heads of width 1 and one scalar per head. The use
#: decides: a key through l2norm (a last-dim function) is a vector, a gate a scalar, a value
#: used only by `l2` and `outer` a scalar that is a width-1 vector where one is needed.
HEAD_DIM_1 = """module hd1(dim: int >= 1, h = 2 >= 1, hd = 1 >= 1) {
  state Wk : [dim, h * hd] = normal(1.0)
  state Wv : [dim, h * hd] = normal(1.0)
  state Wb : [dim, h] = normal(1.0)
  state Wo : [h * hd, dim] = normal(0.5)
  level memory every 1 token heads h {
    state M : [hd, hd] = 0
    key   k = l2norm(x @ Wk)
    value v = x @ Wv
    gate  b = sigmoid(x @ Wb)
    minimize l2(M(k), v) by gd(lr = b)
    read y = M(k) * b
  }
  out = y @ Wo
}"""


def test_head_dim_1_splits_by_use():
    _, level = level_of(HEAD_DIM_1)
    assert level.splits == (HeadSplit("k", 2, 1), HeadSplit("v", 2, None), HeadSplit("b", 2, None))
    assert level.merges == (HeadMerge("y", 2, 1),)


@pytest.mark.parametrize("h", [1, 2, 3])
def test_head_dim_1_runs_alike_in_both_schedules(h):
    torch.manual_seed(0)
    reference = compile_module(load(HEAD_DIM_1), schedule="reference", dim=3, h=h).double()
    chunked = compile_module(load(HEAD_DIM_1), schedule="chunked", dim=3, h=h).double()
    chunked.load_state_dict(reference.state_dict())
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    with torch.no_grad():
        (y_ref, _), (y_fast, _) = reference(x), chunked(x)
    assert y_ref.shape == (2, 6, 3)
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-10, atol=1e-12)
