"""check_invariants passes on stdlib specs in both schedules and finds planted breaks: a
module that sees the future, and an optimizer that forgets its step count on reload."""
import importlib

import pytest

from nldsl.checking import CheckFailure, check_invariants

module_module = importlib.import_module("nldsl.module.module")
optimizer_module = importlib.import_module("nldsl.optim.optimizer")


pytestmark = pytest.mark.usefixtures("quick_shrinking")


SPECS = {
    "adam": "adam",
    "sgd": "sgd",
    "linear attention": "linear_attention",
    "delta rule recurrence": "examples/deltanet_recurrence.nl",
}


@pytest.mark.parametrize("name", SPECS.values(), ids=SPECS.keys())
def test_stdlib_invariants_hold(name):
    result = check_invariants(name, examples=3)
    assert result.status == "pass" and result.examples == 3


def test_a_module_that_sees_the_future_is_found(monkeypatch):
    """Planted: the reference schedule adds a trace of the whole stream's last token to every
    output, so outputs before t depend on inputs after t."""
    original = module_module.run_reference

    def leaking(program, params, x, state, end=True):
        y, new = original(program, params, x, state, end)
        return y + 1e-3 * x[:, -1:, :], new

    monkeypatch.setattr(module_module, "run_reference", leaking)
    with pytest.raises(CheckFailure) as failure:
        check_invariants("linear_attention", examples=10, schedules=("reference",))
    text = str(failure.value)
    assert text.startswith("linear_attention (reference schedule) breaks an invariant: causality "
                           "(inputs after token")
    assert "out[:, :cut]" in text and "cut = " in text


def test_an_optimizer_that_forgets_its_step_on_reload_is_found(monkeypatch):
    """Planted: load_state_dict restarts every tensor's step count (Adam's bias correction then
    starts over)."""
    original = optimizer_module.SpecOptimizer.load_state_dict

    def forgetful(self, state_dict):
        original(self, state_dict)
        for state in self.state.values():
            if state:
                state["step"] = 0

    monkeypatch.setattr(optimizer_module.SpecOptimizer, "load_state_dict", forgetful)
    with pytest.raises(CheckFailure, match=r"adam \(reference schedule\) breaks an invariant: "
                                           r"resume from state_dict before step \d+"):
        check_invariants("adam", examples=10, schedules=("reference",))
