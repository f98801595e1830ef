"""The formal languages of Nested Learning Table 5 (Irie et al. 2023, who take Bhattamishra,
Ahuja & Goyal 2020's data): a sampler of words and the set of valid next symbols after each
prefix.

Bhattamishra et al. train on the *character prediction* task: after each prefix `w[:t]` of a
word of the language, the model outputs the set of symbols that may follow, where the end
symbol `T` may follow exactly when `w[:t]` is itself in the language:

    follow(w[:t]) = {s in Sigma : w[:t] s is a prefix of a word of L}  u  ({T} if w[:t] in L)

For Parity and (aa)* every symbol may always follow, so the target is their code's binary
"is the prefix in L" label; for a^n b^n (c^n) it is their counter languages' `a/b`, `b`, `c`,
`T` outputs; for Shuffle-2 the open brackets and each close bracket whose depth is positive
(their `lineToTensorOutput`), plus `T` when both depths are 0.

    parity      {0,1}*, an even number of 1s        (Bhattamishra et al. sec. 7, Parity)
    aa          (aa)*                               (non-star-free, modular counting)
    abab        (abab)*
    anbn        a^n b^n, n >= 1                     (counter language)
    anbncn      a^n b^n c^n, n >= 1
    shuffle2    shuffles of two Dyck-1 languages, brackets () and []  (Suzgun et al. 2019)

Every word of a sampled length is drawn uniformly from the words of the language of that
length (Parity: uniform bits, the last one fixing the parity; Shuffle-2: each Dyck-1 word
uniform by the cycle lemma, then a uniform interleaving).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

END = "T"


@dataclass(frozen=True)
class Language:
    name: str
    alphabet: str
    period: int                                   # word lengths are the multiples of this
    minimum: int                                  # the shortest word sampled
    draw: Callable[[np.random.Generator, int], str]
    follow: Callable[[str], list[set[str]]]       # follow(w)[t - 1] = follow(w[:t])

    def lengths(self, lo: int, hi: int) -> list[int]:
        """The word lengths in [lo, hi] the language has."""
        return [n for n in range(max(lo, self.minimum), hi + 1) if n % self.period == 0]


# ---------------------------------------------------------------- samplers

def _parity(rng: np.random.Generator, n: int) -> str:
    bits = rng.integers(0, 2, n)
    bits[-1] = bits[:-1].sum() % 2  # the last bit makes the count of 1s even
    return "".join(map(str, bits))


def _repeat(unit: str) -> Callable[[np.random.Generator, int], str]:
    return lambda rng, n: unit * (n // len(unit))


def _counter(letters: str) -> Callable[[np.random.Generator, int], str]:
    return lambda rng, n: "".join(c * (n // len(letters)) for c in letters)


def _dyck1(rng: np.random.Generator, pairs: int) -> list[int]:
    """A uniform Dyck-1 word of `pairs` pairs as +1/-1 steps (cycle lemma: of the rotations
    of a sequence of `pairs` +1s and `pairs + 1` -1s exactly one has every proper prefix sum
    >= 0; it starts after the first minimum of the prefix sums; drop its final -1)."""
    steps = rng.permutation([1] * pairs + [-1] * (pairs + 1))
    start = int(np.argmin(np.cumsum(steps))) + 1
    return list(np.roll(steps, -start)[:-1])


def _shuffle2(rng: np.random.Generator, n: int) -> str:
    first = int(rng.integers(0, n // 2 + 1))
    words = [_dyck1(rng, first), _dyck1(rng, n // 2 - first)]
    owner = rng.permutation([0] * (2 * first) + [1] * (n - 2 * first))
    out, cursor = [], [0, 0]
    for k in owner:
        step = words[k][cursor[k]]
        cursor[k] += 1
        out.append("([" [k] if step > 0 else ")]"[k])
    return "".join(out)


# ---------------------------------------------------------------- follow sets

def _follow_parity(word: str) -> list[set[str]]:
    ones, out = 0, []
    for s in word:
        ones += s == "1"
        out.append({"0", "1"} | ({END} if ones % 2 == 0 else set()))
    return out


def _follow_repeat(unit: str) -> Callable[[str], list[set[str]]]:
    def follow(word: str) -> list[set[str]]:
        return [{unit[t % len(unit)]} | ({END} if t % len(unit) == 0 else set())
                for t in range(1, len(word) + 1)]
    return follow


def _follow_counter(letters: str) -> Callable[[str], list[set[str]]]:
    """A prefix a^n b^j ... : while in the first block, `a` or `b`; then the current letter
    until its count reaches n, then the next letter (or T after the last block)."""
    def follow(word: str) -> list[set[str]]:
        n, out = 0, []
        for t in range(1, len(word) + 1):
            block = letters.index(word[t - 1])
            if block == 0:
                n = t
                out.append({letters[0], letters[1]})
                continue
            done = t - n * block  # letters of this block so far
            nxt = letters[block] if done < n else (
                letters[block + 1] if block + 1 < len(letters) else END)
            out.append({nxt})
        return out
    return follow


def _follow_shuffle2(word: str) -> list[set[str]]:
    depth, out = {"(": 0, "[": 0}, []
    for s in word:
        if s in depth:
            depth[s] += 1
        else:
            depth["(" if s == ")" else "["] -= 1
        closes = {")" if o == "(" else "]" for o, d in depth.items() if d > 0}
        out.append({"(", "["} | closes | ({END} if not closes else set()))
    return out


LANGUAGES = {lang.name: lang for lang in [
    Language("parity", "01", 1, 1, _parity, _follow_parity),
    Language("aa", "a", 2, 2, _repeat("aa"), _follow_repeat("aa")),
    Language("abab", "ab", 4, 4, _repeat("abab"), _follow_repeat("abab")),
    Language("anbn", "ab", 2, 2, _counter("ab"), _follow_counter("ab")),
    Language("anbncn", "abc", 3, 3, _counter("abc"), _follow_counter("abc")),
    Language("shuffle2", "()[]", 2, 2, _shuffle2, _follow_shuffle2),
]}
