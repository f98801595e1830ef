"""Single needle in a haystack, at small scale (the synthetic retrieval test of Kamradt 2023
and RULER's `niah_single`, Hsieh et al. 2024, with tokens instead of sentences).

A haystack of `seq_len - 1` random filler tokens holds one needle, the marker token followed
by a value token, at a random depth; the sequence ends with the marker again, and the model
must output the needle's value there, the only position that counts:

    inputs = f f f ... f  MARK v  f ... f  MARK      target at the last position: v

Tokens: 0 is the marker, values are 1 .. V, fillers V + 1 .. vocab_size - 1 (disjoint, so a
filler is never taken for a value). `depth` fixes the needle's relative position (0 at the
start, 1 just before the query); None draws it uniformly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nldsl.tasks.batch import Batch, rng_for

MARK = 0
_TRAIN, _EVAL = 20, 21


def sample(rng: np.random.Generator, count: int, seq_len: int, values: int, vocab_size: int,
           depth: float | None = None) -> Batch:
    if seq_len < 3 or vocab_size <= values + 1:
        raise ValueError(f"needle: seq_len >= 3 and vocab_size > values + 1 "
                         f"(got {seq_len}, {vocab_size}, {values})")
    inputs = rng.integers(values + 1, vocab_size, size=(count, seq_len))  # [B, T] fillers
    value = rng.integers(1, values + 1, size=count)                       # [B]
    last = seq_len - 3  # the latest needle start that leaves the value before the query
    if depth is None:
        where = rng.integers(0, last + 1, size=count)
    else:
        where = np.full(count, round(depth * last))
    rows = np.arange(count)
    inputs[rows, where], inputs[rows, where + 1], inputs[:, -1] = MARK, value, MARK
    targets = np.zeros((count, seq_len), dtype=np.int64)  # [B, T]
    mask = np.zeros((count, seq_len), dtype=bool)         # [B, T]
    targets[:, -1], mask[:, -1] = value, True
    return Batch(torch.from_numpy(inputs), torch.from_numpy(targets), torch.from_numpy(mask))


@dataclass(frozen=True)
class NeedleTask:
    seq_len: int = 64
    values: int = 16
    vocab_size: int = 64
    eval_size: int = 128
    name: str = "needle"

    def train_batch(self, seed: int, step: int, batch_size: int) -> Batch:
        return sample(rng_for(seed, step, _TRAIN), batch_size, self.seq_len, self.values,
                      self.vocab_size)

    def eval_batches(self, seed: int, step: int = 0) -> dict[str, Batch]:
        """Uniform depths, and the needle at the very start (the hardest: the whole haystack
        lies between it and the query)."""
        rng = rng_for(seed, 0, _EVAL)
        return {"eval": sample(rng, self.eval_size, self.seq_len, self.values, self.vocab_size),
                "depth0": sample(rng, self.eval_size, self.seq_len, self.values,
                                 self.vocab_size, depth=0.0)}
