"""A randomized titans_pytorch.NeuralMemory, shared by the tests that compare with the library
(tests/test_paper_loops.py checks the oracle against it, tests/test_titans_pytorch_compat.py the
compiled `titans_pytorch` specs).

Why O(1) parameters: at the library's initialisation the gates sit near sigmoid(0) = 1/2 and
gamma, the biases and the norm weights at 0 or 1, where a wrong sign or a missing term hides.
"""
from __future__ import annotations

import math

import torch

DT = torch.float64


def randomized_neural_memory(seed: int, dim: int, heads: int, dim_head: int, chunk: int,
                             batch_size: int | None):
    """A float64 titans_pytorch.NeuralMemory with every parameter redrawn at O(1) scale, so the
    gates spread over (0, 1) and gamma, the biases and the norm weights are not at their init
    (a wrong sign or a missing term shows)."""
    from titans_pytorch import NeuralMemory

    torch.manual_seed(seed)
    mem = NeuralMemory(dim=dim, chunk_size=chunk, heads=heads, dim_head=dim_head,
                       batch_size=batch_size).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in mem.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=DT)
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * noise)
            elif name.endswith("bias") or "gamma" in name or name == "memory_model_parameters.0":
                p.copy_(0.5 * noise)                                     # biases, LayerNorm gamma
            else:
                p.copy_(noise / math.sqrt(p.shape[-2] if name.startswith("memory_model") else
                                          p.shape[-1]))
    return mem
