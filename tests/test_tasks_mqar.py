"""MQAR batches, checked against the definition: each target is the value paired with the
query key in the sequence's context."""
import numpy as np
import pytest
import torch

from nldsl.tasks.mqar import MQARTask, sample


@pytest.mark.parametrize("pairs,seq_len", [(2, 16), (8, 64), (16, 64)],
                         ids=["2-pairs-16", "8-pairs-64", "16-pairs-64"])
def test_every_target_is_the_key_s_value(pairs, seq_len):
    batch = MQARTask(pairs, seq_len).train_batch(seed=0, step=0, batch_size=16)
    assert batch.inputs.shape == batch.targets.shape == batch.mask.shape == (16, seq_len)
    for row, target, mask in zip(batch.inputs.tolist(), batch.targets.tolist(),
                                 batch.mask.tolist()):
        context = dict(zip(row[0:2 * pairs:2], row[1:2 * pairs:2]))
        assert len(context) == pairs                           # distinct keys
        queries = [t for t in range(seq_len) if mask[t]]
        assert len(queries) == pairs
        assert sorted(row[t] for t in queries) == sorted(context)  # every key asked once
        for t in queries:
            assert t >= 2 * pairs and target[t] == context[row[t]] == row[t + 1]


def test_keys_and_values_are_disjoint_halves():
    batch = sample(np.random.default_rng(0), 32, 32, 4, 64)
    context = batch.inputs[:, :8]
    assert (context[:, 0::2] < 32).all() and (context[:, 0::2] >= 1).all()
    assert (context[:, 1::2] >= 32).all()


def test_queries_favour_the_start_of_the_query_region():
    """Zoology's power law: most queries sit near the context."""
    batch = sample(np.random.default_rng(0), 256, 256, 4, 64)
    where = batch.mask.nonzero()[:, 1].float() - 8
    assert where.median() < 248 / 4


def test_too_many_pairs_is_an_error():
    with pytest.raises(ValueError, match="pairs need"):
        MQARTask(pairs=8, seq_len=16).train_batch(0, 0, 1)


def test_seeded():
    task = MQARTask(4, 32)
    assert torch.equal(task.train_batch(3, 1, 4).inputs, task.train_batch(3, 1, 4).inputs)
    assert torch.equal(task.eval_batches(3)["eval"].inputs, task.eval_batches(3, 9)["eval"].inputs)
