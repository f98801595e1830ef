"""A continual-learning stream: tasks in sequence, accuracy on every earlier task after each.

The default stream is the token analogue of permuted MNIST (Goodfellow et al. 2013; Kirkpatrick
et al. 2017): every task reads the same kind of input, uniform tokens `x_t` from `0 .. S-1`,
and must output a label `g_i(x_t)` in `0 .. C-1` under its own fixed random labelling `g_i`
(drawn from `label_seed` and the task's index, not from the run's seed, so every run
sees the same tasks). Tasks conflict, so a network that only
learns in its weights forgets task i while it learns task i + 1; how much it keeps is the
measure.

`Stream` cuts a run into `steps_per_task` steps per task (the last task runs to the end) and,
after s steps, evaluates every task trained in them. Any tasks with one vocabulary can make a stream.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nldsl.tasks.batch import Batch, rng_for

_TRAIN, _EVAL, _LABELS = 30, 31, 32


@dataclass(frozen=True)
class LabellingTask:
    """Task `index`: label each token by `g_index`, a fixed random map from S symbols to C
    labels."""
    index: int
    symbols: int = 32
    labels: int = 8
    seq_len: int = 32
    eval_size: int = 64
    label_seed: int = 0

    @property
    def name(self) -> str:
        return f"task{self.index}"

    @property
    def vocab_size(self) -> int:
        return self.symbols

    def labelling(self) -> np.ndarray:
        """`g_index` as a table `[S]` of labels."""
        return rng_for(self.label_seed, self.index, _LABELS).integers(0, self.labels,
                                                                      self.symbols)

    def _sample(self, rng: np.random.Generator, count: int) -> Batch:
        inputs = rng.integers(0, self.symbols, size=(count, self.seq_len))  # [B, T]
        targets = self.labelling()[inputs]                                   # [B, T]
        return Batch(torch.from_numpy(inputs), torch.from_numpy(targets),
                     torch.ones(count, self.seq_len, dtype=torch.bool))

    def train_batch(self, seed: int, step: int, batch_size: int) -> Batch:
        return self._sample(rng_for(seed, step, _TRAIN + 3 * self.index), batch_size)

    def eval_batches(self, seed: int, step: int = 0) -> dict[str, Batch]:
        return {self.name: self._sample(rng_for(seed, 0, _EVAL + 3 * self.index),
                                        self.eval_size)}


@dataclass(frozen=True)
class Stream:
    tasks: tuple
    steps_per_task: int
    name: str = "continual"

    def __post_init__(self):
        if len({t.vocab_size for t in self.tasks}) != 1:
            raise ValueError("the tasks of a stream must share one vocabulary")

    @property
    def vocab_size(self) -> int:
        return self.tasks[0].vocab_size

    def task_at(self, step: int) -> int:
        """The index of the task trained at `step`."""
        return min(step // self.steps_per_task, len(self.tasks) - 1)

    def train_batch(self, seed: int, step: int, batch_size: int) -> Batch:
        return self.tasks[self.task_at(step)].train_batch(seed, step, batch_size)

    def eval_batches(self, seed: int, step: int = 0) -> dict[str, Batch]:
        """After `step` steps: every task trained in them, each under its own name."""
        out = {}
        for task in self.tasks[: self.task_at(max(step - 1, 0)) + 1]:
            batches = task.eval_batches(seed)
            for split, batch in batches.items():
                out[task.name if len(batches) == 1 else f"{task.name}/{split}"] = batch
        return out


def labelling_stream(tasks: int = 3, steps_per_task: int = 100, **options) -> Stream:
    return Stream(tuple(LabellingTask(i, **options) for i in range(tasks)), steps_per_task)
