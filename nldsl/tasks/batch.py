"""What every task hands the trainer: a `Batch`, its loss and its accuracies.

A task is a pure function of `(seed, step)`: the batch of a step is drawn from
`numpy.random.default_rng([seed, step, salt])`, so the data position of a run is its step
count, a resumed run draws the same batches, and a rank of a distributed run can take its
slice of the same global batch.

Two kinds of targets:
- `classes`: `targets [B, T]` long, one next token per position (MQAR, needle, continual);
  cross-entropy over the vocabulary on the masked positions.
- `sets`: `targets [B, T, C]` float k-hot, the set of valid next symbols per position
  (character prediction, Gers & Schmidhuber 2001; Bhattamishra et al. 2020, sec. 5): an
  independent sigmoid per symbol, binary cross-entropy on the first `C` logits, and a
  position is right when the predicted set (logit > 0) equals the target set.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Batch:
    inputs: torch.Tensor   # [B, T] long
    targets: torch.Tensor  # [B, T] long (classes) or [B, T, C] float (sets)
    mask: torch.Tensor     # [B, T] bool: positions that count

    @property
    def kind(self) -> str:
        return "sets" if self.targets.dim() == 3 else "classes"

    def slice(self, start: int, stop: int) -> "Batch":
        """Rows `start:stop`: one rank's share of a global batch."""
        return Batch(self.inputs[start:stop], self.targets[start:stop], self.mask[start:stop])

    def to(self, device) -> "Batch":
        return Batch(self.inputs.to(device), self.targets.to(device), self.mask.to(device))


def rng_for(seed: int, step: int, salt: int) -> np.random.Generator:
    """The generator of one batch; `salt` keeps tasks and splits apart."""
    return np.random.default_rng([seed, step, salt])


def loss(logits: torch.Tensor, batch: Batch, count=None) -> torch.Tensor:
    """Mean loss over the masked positions (and, for sets, over the symbols); `count` divides
    the sum instead of this batch's positions (a rank's share of a global mean)."""
    mask = batch.mask  # [B, T]
    per = position_losses(logits, batch)  # [B, T]
    return (per * mask).sum() / (mask.sum().clamp(min=1) if count is None else count)


def position_losses(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Each position's loss `[B, T]` (off the mask too): the next token's cross-entropy, or
    the sigmoid cross-entropy averaged over the follow-set symbols."""
    if batch.kind == "sets":
        width = batch.targets.shape[-1]
        return F.binary_cross_entropy_with_logits(
            logits[..., :width], batch.targets, reduction="none").mean(-1)  # [B, T]
    return F.cross_entropy(logits.transpose(1, 2), batch.targets, reduction="none")  # [B, T]


def correct(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Per position, whether the prediction is right: `[B, T]` bool (False off the mask)."""
    if batch.kind == "sets":
        width = batch.targets.shape[-1]
        hit = ((logits[..., :width] > 0) == (batch.targets > 0.5)).all(-1)  # [B, T]
    else:
        hit = logits.argmax(-1) == batch.targets  # [B, T]
    return hit & batch.mask


def accuracy(logits: torch.Tensor, batch: Batch) -> dict[str, float]:
    """`token`: the fraction of masked positions right; `sequence`: the fraction of sequences
    right at every masked position (Bhattamishra et al.'s criterion: a string is recognised
    when every output along it is correct)."""
    hit, mask = correct(logits, batch), batch.mask
    token = hit.sum().item() / max(mask.sum().item(), 1)
    sequence = (hit == mask).all(-1).float().mean().item()
    return {"token": token, "sequence": sequence}


def pad(rows: list[list[int]], width: int, fill: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad integer rows to `width`: the array `[B, width]` and its mask of real entries.
    Right padding leaves a causal model's earlier outputs unchanged."""
    out = np.full((len(rows), width), fill, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=bool)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
        mask[i, : len(row)] = True
    return out, mask
