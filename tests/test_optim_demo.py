"""The demo's training table: every optimizer spec trains, and twins track PyTorch."""
from __future__ import annotations

import math

from nldsl.library import stdlib_names, stdlib_text
from nldsl.optim.demo import RUNS, initial_loss, training_rows


def test_every_optimizer_spec_is_in_the_demo():
    optimizers = {n for n in stdlib_names() if stdlib_text(n).count("\noptimizer ")
                  or stdlib_text(n).startswith("optimizer ")}
    assert optimizers == set(RUNS)


def test_every_spec_lowers_the_loss_and_twins_match_pytorch():
    start = initial_loss()
    for name, loss, twin, twin_loss, diff in training_rows():
        assert math.isfinite(float(loss)) and float(loss) < start, name
        if twin:
            assert abs(float(loss) - float(twin_loss)) <= 1e-4 and float(diff) < 1e-5, name
