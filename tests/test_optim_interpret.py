"""The reference schedule: fresh state, the step count, and the frequency semantics of a level
`every N steps` (the sum of its per-step changes written every N steps, its reads held between
writes), checked on M3's sum form, whose slow level is M2 <- M2 + beta3 * g every f steps."""
import pytest
import torch

import nldsl
from nldsl.optim.interpret import initial_state, reference_step
from nldsl.optim.kernels import newton_schulz
from nldsl.optim.plan import lower

B3, F = 0.9, 3


def gradients(count):
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(4, 3, generator=gen, dtype=torch.float64) for _ in range(count)]


def m3_run(steps):
    """(state after each step) of M3 sum form, f = 3, on one 4x3 matrix."""
    plan = lower(nldsl.load("m3"), {"form": "sum"})
    hparams = dict(lr=1e-3, betas=(0.9, 0.99, B3), alpha=1.0, eps=1e-8, f=F, ns_steps=5)
    w = torch.zeros(4, 3, dtype=torch.float64)
    state = initial_state(plan, w, hparams)
    history = []
    for g in gradients(steps):
        w.grad = g
        reference_step(plan, [w], [state], hparams)
        history.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()})
    return history


def test_initial_state_holds_the_step_and_each_stored_state_at_its_initial_value():
    plan = lower(nldsl.load("adagrad"))
    state = initial_state(plan, torch.ones(2, 3), dict(initial_accumulator_value=0.25))
    assert set(state) == {"step", "H"} and state["step"] == 0
    assert torch.equal(state["H"], torch.full((2, 3), 0.25))


def test_a_restarted_state_is_not_stored():
    plan = lower(nldsl.load("muon"))
    assert set(initial_state(plan, torch.ones(3, 3), {})) == {"step", "buf"}


@pytest.mark.parametrize("step", range(1, 8), ids=lambda s: f"step{s}")
def test_a_slow_level_writes_the_sum_of_its_changes_every_f_steps(step):
    grads = gradients(step)
    state = m3_run(step)[-1]
    written = step - step % F                                       # the last multiple of f
    assert state["step"] == step
    torch.testing.assert_close(state["M2"], B3 * sum(grads[:written], torch.zeros(4, 3, dtype=torch.float64)))
    if step % F:
        torch.testing.assert_close(state["acc.M2"], B3 * sum(grads[written:step]))
    else:
        assert "acc.M2" not in state


def test_a_slow_levels_read_is_held_between_writes():
    history = m3_run(7)
    held = [h["read.O2"] for h in history]
    assert torch.equal(held[0], held[1])                            # O2 = NS(M2 = 0) until step 3
    assert not torch.equal(held[1], held[2])
    torch.testing.assert_close(held[2], newton_schulz(history[2]["M2"], 5))
    assert torch.equal(held[2], held[3]) and torch.equal(held[3], held[4])
    torch.testing.assert_close(held[5], newton_schulz(history[5]["M2"], 5))
