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
- `truncate` tokens (training): `nldsl.stream_windows` backpropagates each window's loss before
  the next, the states entering a window taken as constants (truncated backpropagation through
  time, the backward pass's memory bounded by the window; module/task_window.py).
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

    logits, _ = stream(model, batch.inputs, _positions(batch), loss=_segment_loss(batch),
                       through_writes=through_writes)
    return logits


def backward_in_windows(model: torch.nn.Module, batch: Batch, window: int, scale: float, *,
                        through_writes: bool = True) -> torch.Tensor:
    """The stream's logits `[B, T, V]` (detached), each window of `window` tokens' summed loss
    times `scale` backpropagated into the parameters' gradients before the next window
    (nldsl.stream_windows): with `scale` = 1 / the positions scored, the gradients of the mean
    loss, truncated at the windows."""
    from nldsl.module.task_window import stream_windows

    logits, _, _ = stream_windows(model, batch.inputs, _positions(batch), window=window,
                                  loss=_segment_loss(batch), scale=scale,
                                  through_writes=through_writes)
    return logits


def _positions(batch: Batch) -> torch.Tensor:
    """Each token's position `[B, T]`: the stream's targets, so a segment's loss finds its part
    of the batch."""
    steps = batch.inputs.shape[1]
    return torch.arange(steps, device=batch.inputs.device).expand(batch.inputs.shape[:2])


def _segment_loss(batch: Batch):
    def segment_loss(logits: torch.Tensor, at: torch.Tensor) -> torch.Tensor:
        a, b = int(at[0, 0]), int(at[0, -1]) + 1  # the segment's positions [a, b)
        part = Batch(batch.inputs[:, a:b], batch.targets[:, a:b], batch.mask[:, a:b])
        return summed_loss(logits, part)

    return segment_loss
