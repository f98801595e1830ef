"""Needle batches: one marked value in filler, asked for at the end."""
import numpy as np
import pytest

from nldsl.tasks.needle import MARK, NeedleTask, sample


def test_the_target_is_the_needle_s_value():
    batch = NeedleTask(seq_len=32).train_batch(seed=0, step=0, batch_size=32)
    assert batch.inputs.shape == (32, 32)
    assert batch.mask.sum(1).tolist() == [1] * 32 and batch.mask[:, -1].all()
    for row, target in zip(batch.inputs.tolist(), batch.targets[:, -1].tolist()):
        marks = [t for t, tok in enumerate(row) if tok == MARK]
        assert len(marks) == 2 and marks[1] == 31          # the needle, the query
        assert row[marks[0] + 1] == target and 1 <= target <= 16
        assert all(tok > 16 for t, tok in enumerate(row) if t not in (marks[0], marks[0] + 1, 31))


@pytest.mark.parametrize("depth,where", [(0.0, 0), (1.0, 29), (0.5, 14)],
                         ids=["start", "end", "middle"])
def test_depth_places_the_needle(depth, where):
    batch = sample(np.random.default_rng(0), 4, 32, 16, 64, depth=depth)
    assert (batch.inputs[:, where] == MARK).all()


def test_splits():
    splits = NeedleTask(seq_len=16).eval_batches(seed=0)
    assert set(splits) == {"eval", "depth0"} and (splits["depth0"].inputs[:, 0] == MARK).all()
