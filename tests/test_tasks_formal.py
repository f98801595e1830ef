"""Formal-language batches: shapes, padding, seeds, and the Bin0/Bin1 lengths."""
import pytest
import torch

from nldsl.tasks.formal import FormalTask
from nldsl.tasks.languages import LANGUAGES


@pytest.mark.parametrize("name", sorted(LANGUAGES))
def test_batch_shapes_and_padding(name):
    task = FormalTask(name, 1, 12)
    batch = task.train_batch(seed=0, step=0, batch_size=8)
    S = len(LANGUAGES[name].alphabet)
    B, T = batch.inputs.shape
    assert B == 8 and T <= 12 and batch.targets.shape == (B, T, S + 1)
    assert task.vocab_size == S + 1
    assert (batch.inputs[~batch.mask] == S).all()          # pads
    assert (batch.inputs[batch.mask] < S).all()            # symbols
    assert (batch.targets[~batch.mask] == 0).all()
    assert (batch.targets[batch.mask].sum(-1) >= 1).all()  # some symbol always follows


def test_targets_spell_the_follow_sets():
    """`aab` ... a^n b^n with n = 2: {a, b}, {a, b}, {b}, {T}."""
    from nldsl.tasks.formal import encode

    batch = encode(LANGUAGES["anbn"], ["aabb"])
    assert batch.inputs.tolist() == [[0, 0, 1, 1]]
    assert batch.targets[0].tolist() == [[1, 1, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]]


@pytest.mark.parametrize("name", sorted(LANGUAGES))
def test_bins_have_their_lengths(name):
    task = FormalTask(name, 1, 12, eval_size=64)
    splits = task.eval_batches(seed=0)
    lengths = {k: set(b.mask.sum(1).tolist()) for k, b in splits.items()}
    assert max(lengths["bin0"]) <= 12 and min(lengths["bin1"]) >= 13
    assert max(lengths["bin1"]) <= 24


def test_batches_are_functions_of_seed_and_step():
    task = FormalTask("parity", 1, 16)
    a, b = task.train_batch(0, 7, 4), task.train_batch(0, 7, 4)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(task.train_batch(0, 8, 4).inputs, a.inputs)
    assert not torch.equal(task.train_batch(1, 7, 4).inputs, a.inputs)


def test_evaluation_sets_do_not_change_with_the_step():
    task = FormalTask("shuffle2", 2, 10)
    assert torch.equal(task.eval_batches(0, 0)["bin1"].inputs,
                       task.eval_batches(0, 500)["bin1"].inputs)


def test_a_range_without_words_is_an_error():
    with pytest.raises(ValueError, match="no word"):
        FormalTask("abab", 1, 3).train_batch(0, 0, 2)
