"""Formal-language recognition as per-position prediction (NL Table 5; Bhattamishra et al.
2020, sec. 5): train on words of lengths `[lo, hi]`, evaluate on fresh words of the training
lengths ("Bin0") and of longer ones, `[hi + 1, 2 hi]` ("Bin1"; Bhattamishra et al. train on
lengths 1-50 and test Bin1 on 51-100).

Tokens: the alphabet's symbols are 0 .. S-1 and S pads. The target of a position is the
k-hot follow set over S + 1 columns, the alphabet then the end symbol T (column S, the pad's
id: T is never an input), so `vocab_size = S + 1` and the model's logits are the set's logits.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nldsl.tasks.batch import Batch, pad, rng_for
from nldsl.tasks.languages import END, LANGUAGES, Language

_TRAIN, _BIN0, _BIN1 = 0, 1, 2


def encode(lang: Language, words: list[str]) -> Batch:
    """Words to a padded batch of follow-set targets."""
    columns = {s: i for i, s in enumerate(lang.alphabet + END)}
    width = max(len(w) for w in words)
    inputs, mask = pad([[columns[s] for s in w] for w in words], width, len(lang.alphabet))
    targets = np.zeros((len(words), width, len(columns)), dtype=np.float32)  # [B, T, S+1]
    for i, word in enumerate(words):
        for t, allowed in enumerate(lang.follow(word)):
            targets[i, t, [columns[s] for s in allowed]] = 1.0
    return Batch(torch.from_numpy(inputs), torch.from_numpy(targets), torch.from_numpy(mask))


def sample_words(lang: Language, rng: np.random.Generator, count: int, lo: int,
                 hi: int) -> list[str]:
    """`count` words, each of a length drawn uniformly from the language's lengths in
    [lo, hi]."""
    lengths = lang.lengths(lo, hi)
    if not lengths:
        raise ValueError(f"{lang.name} has no word of a length in [{lo}, {hi}]")
    return [lang.draw(rng, int(n)) for n in rng.choice(lengths, size=count)]


@dataclass(frozen=True)
class FormalTask:
    """A language with its training lengths; `eval_size` words per evaluation split."""
    language: str
    lo: int = 1
    hi: int = 20
    eval_size: int = 128

    @property
    def lang(self) -> Language:
        return LANGUAGES[self.language]

    @property
    def name(self) -> str:
        return self.language

    @property
    def vocab_size(self) -> int:
        return len(self.lang.alphabet) + 1

    def train_batch(self, seed: int, step: int, batch_size: int) -> Batch:
        return encode(self.lang, sample_words(self.lang, rng_for(seed, step, _TRAIN),
                                              batch_size, self.lo, self.hi))

    def eval_batches(self, seed: int, step: int = 0) -> dict[str, Batch]:
        """Bin0 (training lengths) and Bin1 (longer), the same for every step of a run."""
        rng0, rng1 = rng_for(seed, 0, _BIN0), rng_for(seed, 0, _BIN1)
        return {"bin0": encode(self.lang, sample_words(self.lang, rng0, self.eval_size,
                                                       self.lo, self.hi)),
                "bin1": encode(self.lang, sample_words(self.lang, rng1, self.eval_size,
                                                       self.hi + 1, 2 * self.hi))}
