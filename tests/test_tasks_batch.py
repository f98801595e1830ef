"""Loss and accuracy on hand-made batches, and `make`'s task strings."""
import pytest
import torch

import nldsl.tasks as tasks
from nldsl.tasks.batch import Batch, accuracy, loss


def sets_batch():
    targets = torch.tensor([[[1., 0.], [0., 1.]], [[1., 1.], [0., 0.]]])  # [2, 2, 2]
    mask = torch.tensor([[True, True], [True, False]])
    return Batch(torch.zeros(2, 2, dtype=torch.long), targets, mask)


def test_sets_accuracy_needs_the_whole_set():
    logits = torch.tensor([[[5., -5.], [-5., 5.]], [[5., -5.], [9., 9.]]])  # row 1 misses a symbol
    acc = accuracy(logits, sets_batch())
    assert acc == {"token": 2 / 3, "sequence": 0.5}


def test_loss_ignores_masked_positions():
    batch = sets_batch()
    logits = torch.zeros(2, 2, 2)
    noisy = logits.clone()
    noisy[1, 1] = 100.0  # masked out
    assert torch.equal(loss(logits, batch), loss(noisy, batch))
    assert loss(logits, batch).item() == pytest.approx(torch.log(torch.tensor(2.)).item())


def test_classes_accuracy_and_loss():
    batch = Batch(torch.zeros(1, 3, dtype=torch.long), torch.tensor([[2, 0, 1]]),
                  torch.tensor([[True, True, False]]))
    logits = torch.nn.functional.one_hot(torch.tensor([[2, 1, 0]]), 3).float() * 10
    assert accuracy(logits, batch) == {"token": 0.5, "sequence": 0.0}
    assert loss(logits, batch).item() == pytest.approx(10.0 / 2, rel=1e-3)


@pytest.mark.parametrize("text,name,options", [
    ("parity", "parity", {}), ("mqar:pairs=4,seq_len=32", "mqar", {"pairs": 4, "seq_len": 32}),
    ("needle: depth=0.5", "needle", {"depth": 0.5})], ids=["bare", "options", "float"])
def test_parse(text, name, options):
    assert tasks.parse(text) == (name, options)


@pytest.mark.parametrize("text,message", [("nope", "unknown task"), ("mqar:pears=2", "mqar"),
                                          ("mqar:pairs", "key=value")],
                         ids=["name", "option", "syntax"])
def test_make_errors(text, message):
    with pytest.raises(ValueError, match=message):
        tasks.make(text)


def test_make_builds_every_task():
    for name in tasks.FACTORIES:
        task = tasks.make(name)
        batch = task.train_batch(0, 0, 2)
        assert batch.inputs.max() < task.vocab_size
