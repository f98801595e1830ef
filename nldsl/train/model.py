"""The network `nldsl.lm` builds (nldsl/lm.py has the definition); it lives here because
`import nldsl` loads no torch."""
from __future__ import annotations

import torch
from torch import nn

# GPT-2's embedding scale: with a tied head, logits start near 0 whatever the vocabulary.
EMBEDDING_STD = 0.02


class LanguageModel(nn.Module):
    def __init__(self, spec, vocab_size: int, dim: int, depth: int, tied: bool,
                 schedule: str, hparams: dict):
        super().__init__()
        from nldsl.module import compile as compile_module
        from nldsl.spec import Spec, load

        if depth < 1 or vocab_size < 1 or dim < 1:
            raise ValueError(f"vocab_size, dim and depth must be >= 1 (got {vocab_size}, "
                             f"{dim}, {depth})")
        spec = spec if isinstance(spec, Spec) else load(spec)
        self.spec_name, self.tied, self.hparams = spec.name, tied, dict(hparams)
        self.embedding = nn.Embedding(vocab_size, dim)
        nn.init.normal_(self.embedding.weight, std=EMBEDDING_STD)
        self.norms = nn.ModuleList(nn.RMSNorm(dim) for _ in range(depth))
        self.blocks = nn.ModuleList(compile_module(spec, schedule=schedule, dim=dim, **hparams)
                                    for _ in range(depth))
        self.final_norm = nn.RMSNorm(dim)
        self.head = None if tied else nn.Linear(dim, vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor, state: list | None = None, *, end: bool = True):
        """tokens `[B, T]` long -> (logits `[B, T, V]`, a list of `depth` block states)."""
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(f"tokens must be a [B, T] long tensor, got {tuple(tokens.shape)} "
                             f"{tokens.dtype}")
        if state is not None and len(state) != len(self.blocks):
            raise ValueError(f"state has {len(state)} block states, the model {len(self.blocks)}")
        h = self.embedding(tokens)  # [B, T, dim]
        states = []
        for l, (norm, block) in enumerate(zip(self.norms, self.blocks)):
            y, s = block(norm(h), None if state is None else state[l], end=end)  # [B, T, dim]
            h = h + y
            states.append(s)
        h = self.final_norm(h)  # [B, T, dim]
        weight = self.embedding.weight if self.tied else self.head.weight  # [V, dim]
        return h @ weight.T, states  # [B, T, V]

    def extra_repr(self) -> str:
        options = ", ".join(f"{k}={v}" for k, v in self.hparams.items())
        return f"spec={self.spec_name}, tied={self.tied}" + (f", {options}" if options else "")
