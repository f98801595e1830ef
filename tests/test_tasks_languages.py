"""Every labelled prefix of every sampled word, checked by recognisers written here: a regular
expression or a count per language (membership), and brute force over all words of the
language up to a length (which symbols can continue a prefix)."""
import itertools
import re
from functools import lru_cache

import numpy as np
import pytest

from nldsl.tasks.formal import sample_words
from nldsl.tasks.languages import END, LANGUAGES


def _counts_equal(word, letters):
    match = re.fullmatch("".join(f"({c}+)" for c in letters), word)
    return bool(match) and len({len(g) for g in match.groups()}) == 1


def _shuffle2(word):
    for open_, close in ["()", "[]"]:
        depth = 0
        for s in word:
            depth += (s == open_) - (s == close)
            if depth < 0:
                return False
        if depth:
            return False
    return True


MEMBER = {
    "parity": lambda w: re.fullmatch("0*(10*10*)*", w) is not None,
    "aa": lambda w: re.fullmatch("(aa)*", w) is not None,
    "abab": lambda w: re.fullmatch("(abab)*", w) is not None,
    "anbn": lambda w: _counts_equal(w, "ab"),
    "anbncn": lambda w: _counts_equal(w, "abc"),
    "shuffle2": _shuffle2,
}
# Sampled words are at most MAX long; every continuation of their prefixes that is a prefix of
# the language completes within MAX + SLACK symbols (a period, or the open brackets' closes).
MAX = {"parity": 10, "aa": 10, "abab": 12, "anbn": 10, "anbncn": 6, "shuffle2": 6}
SLACK = {"parity": 2, "aa": 2, "abab": 4, "anbn": 2, "anbncn": 3, "shuffle2": 2}


@lru_cache(maxsize=None)
def prefixes_of_language(name):
    """Every prefix of every word of the language of length <= MAX + SLACK, by enumerating
    all strings over the alphabet and keeping the members."""
    alphabet, limit = LANGUAGES[name].alphabet, MAX[name] + SLACK[name]
    out = set()
    for n in range(limit + 1):
        for letters in itertools.product(alphabet, repeat=n):
            word = "".join(letters)
            if MEMBER[name](word):
                out.update(word[:t] for t in range(n + 1))
    return out


@pytest.mark.parametrize("name", sorted(LANGUAGES))
def test_sampled_words_are_members(name):
    words = sample_words(LANGUAGES[name], np.random.default_rng(0), 200, 1, 40)
    assert all(MEMBER[name](w) for w in words)
    assert all(1 <= len(w) <= 40 for w in words)


@pytest.mark.parametrize("name", sorted(LANGUAGES))
def test_every_follow_set_is_the_languages(name):
    """follow(w[:t]) = {s : w[:t] s is a prefix of a word} u {T if w[:t] is a word}."""
    lang, prefixes = LANGUAGES[name], prefixes_of_language(name)
    for word in sample_words(lang, np.random.default_rng(1), 60, 1, MAX[name]):
        for t, allowed in enumerate(lang.follow(word), start=1):
            prefix = word[:t]
            expected = {s for s in lang.alphabet if prefix + s in prefixes}
            expected |= {END} if MEMBER[name](prefix) else set()
            assert allowed == expected, (word, t)


@pytest.mark.parametrize("name", sorted(LANGUAGES))
def test_sampling_is_seeded(name):
    draw = lambda seed: sample_words(LANGUAGES[name], np.random.default_rng(seed), 20, 1, 30)
    assert draw(3) == draw(3)


@pytest.mark.parametrize("name", ["parity", "shuffle2"])
def test_words_vary(name):
    """The languages with many words of a length are sampled over them, not one word."""
    words = sample_words(LANGUAGES[name], np.random.default_rng(0), 100, 10, 10)
    assert len(set(words)) > 50


def test_shuffle2_interleaves_both_bracket_kinds():
    words = sample_words(LANGUAGES["shuffle2"], np.random.default_rng(0), 200, 20, 20)
    assert sum(bool(re.search(r"\((?:[^()]*)\[", w)) for w in words) > 20


@pytest.mark.parametrize("name,lo,hi,lengths", [
    ("aa", 1, 9, [2, 4, 6, 8]), ("abab", 1, 12, [4, 8, 12]), ("anbncn", 4, 10, [6, 9]),
    ("parity", 3, 5, [3, 4, 5])], ids=["aa", "abab", "anbncn", "parity"])
def test_lengths_are_the_languages(name, lo, hi, lengths):
    assert LANGUAGES[name].lengths(lo, hi) == lengths
