"""The evaluator computes the arithmetic shapes PyTorch's optimizers fuse with the same single
torch op (so twins agree to the bit), numbers as Python numbers, and spec functions by kernel."""
import math

import pytest
import torch

from nldsl.optim.evaluate import TensorEvaluator
from nldsl.language.parser import parse


def expr(text: str):
    """The expression of a one-line spec `W <- <text>`."""
    return parse("optimizer t() { level a every 1 step { W <- %s } }" % text, "t").levels[0].items[0].value


gen = torch.Generator().manual_seed(0)
ENV = {"a": torch.randn(5, 3, generator=gen), "b": torch.randn(5, 3, generator=gen),
       "c": torch.rand(5, 3, generator=gen) + 0.5, "w": 0.3, "s": 0.7, "n": 4.0}

SHAPES = {
    "lerp": ("a + w * (b - a)", lambda e: torch.lerp(e["a"], e["b"], e["w"])),
    "add with alpha": ("a - s * b", lambda e: torch.add(e["a"], e["b"], alpha=-e["s"])),
    "alpha times a product": ("a + w * (s * b)", lambda e: torch.add(e["a"], e["s"] * e["b"], alpha=e["w"])),
    "addcdiv, nested coefficient": ("a - w * (s * b) / c",
                                    lambda e: torch.addcdiv(e["a"], e["b"], e["c"], value=-(e["w"] * e["s"]))),
    "addcdiv": ("a - s * b / c", lambda e: torch.addcdiv(e["a"], e["b"], e["c"], value=-e["s"])),
    "addcmul (tensor factor)": ("a + c * b", lambda e: torch.addcmul(e["a"], e["c"], e["b"], value=1)),
    "sqrt of a quotient": ("sqrt(c / n)", lambda e: torch.sqrt(e["c"]) / math.sqrt(e["n"])),
    "lerp call": ("lerp(a, b, w)", lambda e: torch.lerp(e["a"], e["b"], e["w"])),
    "addcmul call": ("addcmul(a, b, c, w)", lambda e: torch.addcmul(e["a"], e["b"], e["c"], value=e["w"])),
}


@pytest.mark.parametrize("text, expected", SHAPES.values(), ids=SHAPES.keys())
def test_fused_shapes_are_the_torch_op_bit_for_bit(text, expected):
    assert torch.equal(TensorEvaluator(ENV.__getitem__)(expr(text)), expected(ENV))


NUMBERS = {
    "arithmetic": ("1 - w ** 2 / n", 1 - 0.3 ** 2 / 4.0),
    "math function": ("sqrt(n) + exp(0)", 3.0),
    "max of numbers": ("max(1, n / 8)", 1),
    "conditional": ("s if n > 3 else w", 0.7),
    "tuple index": ("(w, s)[1]", 0.7),
}


@pytest.mark.parametrize("text, expected", NUMBERS.values(), ids=NUMBERS.keys())
def test_numbers_stay_python_numbers(text, expected):
    value = TensorEvaluator(ENV.__getitem__)(expr(text))
    assert not isinstance(value, torch.Tensor) and value == pytest.approx(expected)


def test_max_of_a_tensor_and_a_number_is_elementwise():
    assert torch.equal(TensorEvaluator(ENV.__getitem__)(expr("max(a, 0)")), torch.clamp(ENV["a"], min=0))


def test_spec_functions_call_their_kernels():
    evaluate = TensorEvaluator(ENV.__getitem__)
    assert evaluate(expr("size(a, 1)")) == 3
    torch.testing.assert_close(evaluate(expr("dot(a, b)")), (ENV["a"] * ENV["b"]).sum())
    torch.testing.assert_close(evaluate(expr("l2(a, b)")), 0.5 * ((ENV["a"] - ENV["b"]) ** 2).sum())
    torch.testing.assert_close(evaluate(expr("transpose(a) @ b")), ENV["a"].T @ ENV["b"])
