"""The network's forward pass in training and evaluation: an ordinary call, or `nldsl.stream`
when the spec has levels that learn from the task loss (`minimize task`; issue 11 §1).

With such levels, what the network computes on a sequence depends on the task loss of its own
earlier tokens (NL eq. 71): a CMS block writes, at the end of each of its periods, the sum of
that period's per-token task-gradient steps. The trainer's loss is the task's (nldsl/tasks/
batch.py): per position, the cross-entropy of the next token or the mean sigmoid cross-entropy
over the follow-set symbols, on the positions of the mask. The inner loss handed to
`nldsl.stream` is the *sum* of those per-position losses over a segment's masked positions
(eq. 71 sums per-token gradients; a mean would change with the segmenting), so an inner level
learns from exactly the positions the task scores.

- Training: `nldsl.stream` with gradients on; the outer loss's backward reaches the initial
  states and the projections through the inner writes (second order) unless the run asks for
  `first_order` (`through_writes=False`: each write a constant step).
- Evaluation (`torch.no_grad()`): the levels still learn as they read (test-time learning, the
  model as it is deployed); each evaluation sequence starts from the learned initial states.
- `online=False` freezes them: the network is called directly, an ordinary network.
"""
from __future__ import annotations

import torch

from nldsl.tasks.batch import Batch, position_losses


def learns_online(model: torch.nn.Module) -> bool:
    """Whether `model` (an nldsl.lm network) has levels that learn from the task loss."""
    from nldsl.module.task import task_levels

    return bool(task_levels(model))


def summed_loss(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The sum of the task's per-position losses over the masked positions (the mean of
    nldsl/tasks/batch.py's `loss`, times the positions)."""
    per = position_losses(logits, batch)  # [B, n]
    return (per * batch.mask).sum()


def forward(model: torch.nn.Module, net: torch.nn.Module, batch: Batch, *, online: bool,
            through_writes: bool = True) -> torch.Tensor:
    """The logits `[B, T, V]` of `batch.inputs`: `net(inputs)` (net: the model, or its
    DistributedDataParallel wrapper), or the stream with the task levels learning."""
    if not online:
        logits, _ = net(batch.inputs)
        return logits
    from nldsl.module.task import stream

    steps = batch.inputs.shape[1]
    positions = torch.arange(steps, device=batch.inputs.device).expand(batch.inputs.shape)  # [B, T]

    def segment_loss(logits: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        a, b = int(at[0, 0]), int(at[0, -1]) + 1  # the segment's positions [a, b)
        part = Batch(batch.inputs[:, a:b], batch.targets[:, a:b], batch.mask[:, a:b])
        return summed_loss(logits, part)

    logits, _ = stream(model, batch.inputs, positions, loss=segment_loss,
                       through_writes=through_writes)
    return logits
