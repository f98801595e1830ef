"""The fused-kernel recogniser matches plans by structure, never by a spec's name."""
from __future__ import annotations

import pytest

import nldsl
from nldsl.optim.patterns import match_adam
from nldsl.optim.plan import lower

RENAMED_ADAM = """
optimizer my_adaptive(step_size = 1e-3 >= 0, b = (0.9, 0.999) in [0, 1), tiny = 1e-8 > 0) {
  level params every 1 step {
    W <- W - step_size * (first / (1 - b[0] ** step)) / (sqrt(second / (1 - b[1] ** step)) + tiny)
  }
  level stats every 1 step {
    key gradient = grad(W)
    state first like W = 0
    state second like W = 0
    first: minimize -dot(first, gradient) by ema(b[0])
    second: minimize -dot(second, gradient * gradient) by ema(b[1])
  }
}
"""

NOT_ADAM = RENAMED_ADAM.replace("sqrt(second", "abs(second")


@pytest.mark.parametrize("text, kernel", [
    pytest.param("adam", "_fused_adam_", id="stdlib-adam"),
    pytest.param("adamw", "_fused_adamw_", id="stdlib-adamw"),
    pytest.param(RENAMED_ADAM, "_fused_adam_", id="adam-with-other-names"),
])
def test_adam_plans_use_the_fused_kernel(text, kernel):
    source = match_adam(lower(nldsl.load(text)))
    assert source is not None and f"torch.{kernel}(" in source


@pytest.mark.parametrize("text", [
    pytest.param(NOT_ADAM, id="abs-instead-of-sqrt"),
    pytest.param("rmsprop", id="rmsprop"),
    pytest.param("sgd", id="sgd"),
])
def test_other_plans_do_not(text):
    assert match_adam(lower(nldsl.load(text))) is None
