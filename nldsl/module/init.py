"""Initial values: the outer parameters and the per-sequence fast states (docs/modules.md).

    = c (a number or constant expression)   every entry c
    = zeros() / ones() / eye()               as named (eye: the identity on the last two dims)
    = normal(std) / uniform(bound)           drawn once, at construction; std and bound default
                                             to 1 / sqrt(fan_in), fan_in = the first dim (x @ W)
    (nothing written)                        0; a conv kernel uniform(+-1 / sqrt(width)), as
                                             torch's Conv1d and flash-linear-attention's
"""
from __future__ import annotations

import math

import torch

from nldsl.language import ast
from nldsl.language.consteval import evaluate


def draw(expr: ast.Expr | None, shape: tuple[int, ...], values: dict, dtype=None) -> torch.Tensor:
    """The tensor `expr` initialises, of `shape`."""
    if expr is None:
        return torch.zeros(shape, dtype=dtype)
    if isinstance(expr, ast.Call) and expr.func in ("zeros", "ones", "eye", "normal", "uniform"):
        args = [evaluate(a, values) for a in expr.args]
        fan_in = shape[0] if shape else 1
        if expr.func == "zeros":
            return torch.zeros(shape, dtype=dtype)
        if expr.func == "ones":
            return torch.ones(shape, dtype=dtype)
        if expr.func == "eye":
            if len(shape) < 2:
                raise ValueError(f"eye() needs a matrix shape, got {list(shape)}")
            return torch.eye(shape[-2], shape[-1], dtype=dtype).expand(shape).clone()
        scale = float(args[0]) if args else 1 / math.sqrt(max(fan_in, 1))
        tensor = torch.empty(shape, dtype=dtype)
        return tensor.normal_(0, scale) if expr.func == "normal" else tensor.uniform_(-scale, scale)
    return torch.full(shape, float(evaluate(expr, values)), dtype=dtype)


def conv_kernel(channels: int, width: int, dtype=None) -> torch.Tensor:
    bound = 1 / math.sqrt(width)
    return torch.empty(channels, width, dtype=dtype).uniform_(-bound, bound)   # [C, W]
