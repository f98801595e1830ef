"""The continual-learning experiment of docs/training.md: task A, then task B, in one stream,
with the levels that learn from the task loss online (`nldsl.stream(..., learn=True)`) or frozen
(`learn=False`), from the same trained network (issue 11 §3).

The tasks are nldsl/tasks/continual.py's labellings: token x_t -> label g(x_t) in 0 .. C-1, the
label the target at t and never an input, so only a level that learns from the task loss can
learn a labelling it has not been trained on; a frozen network, whatever its fast memories do with
the inputs, cannot. Two kinds of second task:

- **split** (`conflict=False`): A labels the symbols 0 .. S/2-1, B the symbols S/2 .. S-1
  (split MNIST's analogue): one network can know both, so how much of A survives B measures the
  interference of B's writes with A's in the shared weights;
- **conflicting** (`conflict=True`): A and B label the same S symbols differently (permuted
  MNIST's analogue): no function of x_t serves both, so learning B must overwrite A.

The network first gets a short **outer training** (`meta_train`): the outer optimizer (Adam)
on the summed next-label loss of streams whose every sequence has its own random labelling of all
S symbols (labellings 1000 and up: never A's or B's), with the levels online and the outer
gradient truncated at the writes (`through_writes=False`, first order). A frozen network can do no
better there than the label marginal, so this trains the embedding, head, norms and the initial
states to make the online writes learn a labelling fast.

`trial` then streams A (`tokens` tokens) and B (`tokens` more, the state carried on) for both
conditions from that one network, and measures, as mean per-token cross-entropy:

- `a_after_a`, `a_after_b`: A on a held-out probe (fresh sequences of A, read with the state the
  stream left and learn=False, so the probe teaches nothing) after the A and after the B stream;
- `b_stream`: the loss area over the B stream (the mean of its tokens' losses while it is read:
  lower is learning B faster).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

import nldsl
from nldsl.tasks.continual import LabellingTask

_META_LABELLINGS = 1000      # outer training's labellings: 1000, 1001, ... (A is 0, B is 1)


@dataclass(frozen=True)
class Setting:
    """One experiment's sizes. `hparams` go to nldsl.lm (the spec's periods, rates, sizes)."""
    spec: str = "cms"
    hparams: tuple = ()
    symbols: int = 16
    labels: int = 4
    dim: int = 32
    depth: int = 1
    batch: int = 8
    tokens: int = 64             # per task stream, and per outer-training sequence
    probe: int = 32
    outer_steps: int = 40
    outer_lr: float = 1e-2


def build(setting: Setting, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return nldsl.lm(setting.spec, vocab_size=setting.symbols, dim=setting.dim,
                    depth=setting.depth, **dict(setting.hparams)).double()


def labelled(setting: Setting, index: int, length: int, seed: int, count: int, half=None):
    """`count` sequences of labelling `index`: on all symbols (`half` None), or on the lower
    (0) or upper (1) half of them. Returns (inputs, targets), each [count, length] long."""
    symbols = setting.symbols if half is None else setting.symbols // 2
    task = LabellingTask(index, symbols=symbols, labels=setting.labels, seq_len=length)
    batch = task.train_batch(seed, 0, count)
    shift = 0 if half is None else half * (setting.symbols // 2)
    return batch.inputs + shift, batch.targets


def mean_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def meta_train(model, setting: Setting, seed: int) -> list[float]:
    """The outer training (module docstring); returns the loss of every step."""
    opt = torch.optim.Adam(model.parameters(), lr=setting.outer_lr)
    losses = []
    for step in range(setting.outer_steps):
        first = _META_LABELLINGS + step * setting.batch
        pairs = [labelled(setting, first + j, setting.tokens, seed, 1)
                 for j in range(setting.batch)]
        inputs, targets = (torch.cat(part) for part in zip(*pairs))       # [B, T]
        logits, _ = nldsl.stream(model, inputs, targets, learn=True, through_writes=False)
        loss = mean_loss(logits, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def trial(model, setting: Setting, seed: int, conflict: bool = False) -> dict:
    """Stream A then B with the task levels online and frozen; {True: online, False: frozen},
    each {"a_after_a", "a_after_b", "b_stream"} (module docstring)."""
    half_a, half_b = (None, None) if conflict else (0, 1)
    a = labelled(setting, 0, setting.tokens, seed + 1, setting.batch, half_a)
    b = labelled(setting, 1, setting.tokens, seed + 1, setting.batch, half_b)
    probe, probe_targets = labelled(setting, 0, setting.probe, seed + 2, setting.batch, half_a)
    found = {}
    with torch.no_grad():
        for learn in (True, False):
            _, state = nldsl.stream(model, *a, learn=learn, end=False)
            a_after_a = mean_loss(model(probe, state, end=False)[0], probe_targets)
            logits, state = nldsl.stream(model, *b, state, learn=learn, end=False)
            a_after_b = mean_loss(model(probe, state, end=False)[0], probe_targets)
            found[learn] = {"a_after_a": a_after_a.item(), "a_after_b": a_after_b.item(),
                            "b_stream": mean_loss(logits, b[1]).item()}
    return found
