"""check_schedules passes on stdlib specs and finds a planted error in a fast path: the
chunked delta-rule kernel (modules) and the generated fused step (optimizers)."""
import importlib

import pytest
import torch

from nldsl.checking import CheckFailure, check_schedules
from nldsl.checking.schedules import float64_variant
from nldsl.module import chunked
from nldsl.spec import load

optimizer_module = importlib.import_module("nldsl.optim.optimizer")   # nldsl.optim.optimizer is also a function


pytestmark = pytest.mark.usefixtures("quick_shrinking")


SPECS = {
    "adam": "adam",
    "sgd": "sgd",
    "muon (Newton-Schulz in float64)": "muon",
    "linear attention": "linear_attention",
    "delta rule recurrence": "examples/deltanet_recurrence.nl",
    "huber delta (token loop)": "examples/huber_delta.nl",
}


@pytest.mark.parametrize("name", SPECS.values(), ids=SPECS.keys())
def test_stdlib_schedules_agree(name):
    result = check_schedules(name, examples=4)
    assert result.status == "pass" and result.examples == 4


def test_newton_schulz_is_compared_in_float64():
    text = str(float64_variant(load("muon")))
    assert '"float64"' in text and '"bfloat16"' not in text
    assert float64_variant(load("adam")).text == load("adam").text


def test_an_error_in_the_chunked_kernel_after_the_first_block_is_found(monkeypatch):
    """Planted: the WY kernel's outputs after the first block are off by 1e-6 (relative);
    only a stream longer than its block shows it, so the drawn lengths and block sizes must."""
    original = chunked.linear_delta_blocks

    def wrong(s0, a, c, k, w, queries, block):
        ys, s_end = original(s0, a, c, k, w, queries, block)
        return [torch.cat([y[..., :block, :], y[..., block:, :] * (1 + 1e-6)], -2) for y in ys], s_end

    monkeypatch.setattr(chunked, "linear_delta_blocks", wrong)
    with pytest.raises(CheckFailure) as failure:
        check_schedules("examples/deltanet_recurrence.nl", examples=20)
    text = str(failure.value)
    assert text.startswith("deltanet_recurrence: the chunked schedule differs from the reference in")
    assert "fast paths: memory:" in text and "block_size = " in text
    assert "largest difference" in text


def test_an_error_in_the_fused_optimizer_step_is_found(monkeypatch):
    """Planted: the generated step adds 1e-6 * grad to the last parameter of each call."""
    original = optimizer_module.compile_plan

    def wrong(plan):
        compiled = original(plan)

        def run(params, states, hparams):
            compiled(params, states, hparams)
            params[-1].add_(params[-1].grad, alpha=1e-6)

        run.mode, run.source = compiled.mode, compiled.source
        return run

    monkeypatch.setattr(optimizer_module, "compile_plan", wrong)
    with pytest.raises(CheckFailure, match=r"adam: the fused schedule differs from the reference "
                                           r"at step 1, in W2\n"):
        check_schedules("adam", examples=5)


def test_an_exception_inside_the_declared_ranges_is_a_failure_with_the_case():
    """`1 / lr` with lr in [0, 1]: the range allows what the update cannot compute."""
    spec = "optimizer div(lr = 0.1 in [0, 1]) { level w every 1 step { W <- W - grad(W) * (1 / lr) } }"
    with pytest.raises(CheckFailure) as failure:
        check_schedules(spec, examples=20)
    text = str(failure.value)
    assert text.startswith("div: ZeroDivisionError: float division by zero")
    assert "Stream(hparams={'lr': 0.0}" in text
