"""Multi-query associative recall (MQAR; Arora et al. 2023, "Zoology", sec. 3.1 and their
`multiquery_ar` generator).

A sequence of length `seq_len` starts with `pairs` key-value pairs `k_1 v_1 ... k_N v_N`
(distinct keys from the lower half of the vocabulary, values from the upper half), followed by
a query region of `seq_len - 2N` tokens: N two-token slots are chosen in it, slot `j` holds
`k_{pi(j)} v_{pi(j)}` for a random order `pi`, every other token is 0. The model must output the
value at each query key's position (the next token), and only there:

    inputs  = k_1 v_1 ... k_N v_N  0 0 k_3 v_3 0 0 ... k_1 v_1 ...
    target  at each queried k: its v

Zoology draws the slots by a power law over their distance from the context (`power_a = 0.01`),
so most queries come soon after the pairs and a few far away; so do we.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nldsl.tasks.batch import Batch, rng_for

_TRAIN, _EVAL = 10, 11


def sample(rng: np.random.Generator, count: int, seq_len: int, pairs: int, vocab_size: int,
           power_a: float = 0.01) -> Batch:
    slots = (seq_len - 2 * pairs) // 2
    half = vocab_size // 2
    if slots < pairs or half - 1 < pairs:
        raise ValueError(f"MQAR: {pairs} pairs need seq_len >= {4 * pairs} and vocab_size >= "
                         f"{2 * pairs + 2} (got {seq_len}, {vocab_size})")
    weights = power_a * np.arange(1, slots + 1) ** (power_a - 1)
    weights /= weights.sum()
    inputs = np.zeros((count, seq_len), dtype=np.int64)   # [B, T]
    targets = np.zeros((count, seq_len), dtype=np.int64)  # [B, T]
    mask = np.zeros((count, seq_len), dtype=bool)         # [B, T]
    for i in range(count):
        keys = rng.choice(np.arange(1, half), size=pairs, replace=False)
        values = rng.choice(np.arange(half, vocab_size), size=pairs)
        inputs[i, 0:2 * pairs:2], inputs[i, 1:2 * pairs:2] = keys, values
        where = 2 * pairs + 2 * rng.choice(slots, size=pairs, replace=False, p=weights)
        order = rng.permutation(pairs)
        inputs[i, where], inputs[i, where + 1] = keys[order], values[order]
        targets[i, where], mask[i, where] = values[order], True
    return Batch(torch.from_numpy(inputs), torch.from_numpy(targets), torch.from_numpy(mask))


@dataclass(frozen=True)
class MQARTask:
    pairs: int = 8
    seq_len: int = 64
    vocab_size: int = 64
    eval_size: int = 128
    name: str = "mqar"

    def train_batch(self, seed: int, step: int, batch_size: int) -> Batch:
        return sample(rng_for(seed, step, _TRAIN), batch_size, self.seq_len, self.pairs,
                      self.vocab_size)

    def eval_batches(self, seed: int, step: int = 0) -> dict[str, Batch]:
        return {"eval": sample(rng_for(seed, 0, _EVAL), self.eval_size, self.seq_len,
                               self.pairs, self.vocab_size)}
