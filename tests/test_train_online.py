"""Training and evaluating a spec whose levels learn from the task loss (nldsl/train/online.py):
the stream's inner loss is the task's, summed over the scored positions; the loop takes that
path (and not the ordinary call) unless the run freezes the levels; resume and two processes
still reproduce one straight run."""
from dataclasses import replace

import pytest
import torch

import nldsl
from nldsl import tasks
from nldsl.tasks.batch import Batch, loss
from nldsl.train import checkpoint, loop
from nldsl.train.config import Config
from nldsl.train.distributed import launch
from nldsl.train.online import backward_in_windows, forward, learns_online, summed_loss

# A CMS whose three blocks write at 1, 2 and 3 tokens (periods that do not divide the words'
# lengths), with rates large enough that a write moves the outputs.
CMS = {"period_slow": 3, "period_mid": 2, "period_fast": 1, "expansion": 1,
       "lr_slow": 0.5, "lr_mid": 0.5, "lr_fast": 0.5}
TINY = dict(spec="cms", task="parity", steps=4, batch=4, seq=7, dim=8, depth=1, hparams=CMS,
            eval_every=2)


def network(**hparams):
    torch.manual_seed(0)
    return nldsl.lm("cms", vocab_size=4, dim=8, depth=1, **{**CMS, **hparams}).double()


@pytest.fixture(params=["parity", "mqar:pairs=2,seq_len=10,vocab_size=16"], ids=["sets", "classes"])
def batch(request):
    return tasks.make(request.param, hi=7) if request.param == "parity" else \
        tasks.make(request.param)


def test_the_inner_loss_is_the_task_loss_summed_over_the_scored_positions(batch):
    b = batch.train_batch(0, 0, 3)
    torch.manual_seed(1)
    logits = torch.randn(*b.inputs.shape, 16, dtype=torch.float64)  # [B, T, V]
    b = Batch(b.inputs, b.targets.double() if b.kind == "sets" else b.targets, b.mask)
    torch.testing.assert_close(summed_loss(logits, b), loss(logits, b) * b.mask.sum(),
                               rtol=1e-12, atol=0)


def _parity_batch(rows=3):
    b = tasks.make("parity", hi=7).train_batch(0, 0, rows)
    return Batch(b.inputs, b.targets.double(), b.mask)


def test_online_learning_changes_what_the_network_computes():
    model, b = network(), _parity_batch()
    frozen = forward(model, model, b, online=False)
    online = forward(model, model, b, online=True)
    assert learns_online(model)
    # the first token is read before any write: the same; later tokens read written blocks
    torch.testing.assert_close(online[:, 0], frozen[:, 0], rtol=1e-12, atol=1e-12)
    assert (online[:, 1:] - frozen[:, 1:]).abs().max() > 1e-3


def test_positions_off_the_mask_teach_nothing():
    """With no position scored the writes are zero and online equals frozen; changing the
    targets off the mask changes nothing."""
    model, b = network(), _parity_batch()
    unscored = Batch(b.inputs, b.targets, torch.zeros_like(b.mask))
    torch.testing.assert_close(forward(model, model, unscored, online=True),
                               forward(model, model, unscored, online=False),
                               rtol=1e-12, atol=1e-12)
    flipped = Batch(b.inputs, torch.where(b.mask[..., None], b.targets, 1 - b.targets), b.mask)
    torch.testing.assert_close(forward(model, model, flipped, online=True),
                               forward(model, model, b, online=True), rtol=0, atol=0)


def test_zero_rates_are_the_frozen_network():
    model, b = network(lr_slow=0.0, lr_mid=0.0, lr_fast=0.0), _parity_batch()
    torch.testing.assert_close(forward(model, model, b, online=True),
                               forward(model, model, b, online=False), rtol=1e-12, atol=1e-12)


def _gradients(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("window", [7, 3], ids=["whole-word", "window-3"])
def test_training_in_windows_is_the_mean_losss_gradient_truncated(window):
    """A window as long as the word is the plain step's gradient; a shorter one has the same
    logits and a different (truncated) gradient."""
    model, b = network(), _parity_batch()
    count = b.mask.sum().item()
    model.zero_grad()
    logits = forward(model, model, b, online=True)
    loss(logits, b).backward()
    plain = _gradients(model)
    model.zero_grad()
    windowed = backward_in_windows(model, b, window, 1 / count)
    torch.testing.assert_close(windowed, logits.detach(), rtol=1e-10, atol=1e-10)
    cut = _gradients(model)
    assert cut.keys() == plain.keys()
    if window >= b.inputs.shape[1]:
        for k in plain:
            torch.testing.assert_close(cut[k], plain[k], rtol=1e-10, atol=1e-12, msg=k)
    else:
        assert any((cut[k] - plain[k]).abs().max() > 1e-6 for k in plain)


def test_a_spec_without_task_levels_runs_the_ordinary_call():
    torch.manual_seed(0)
    model = nldsl.lm("deltanet", vocab_size=4, dim=8, depth=1, heads=2, head_dim=4)
    assert not learns_online(model)


def _run(tmp_path, name, **options):
    config = Config(**{**TINY, "out": str(tmp_path / name), **options})
    assert launch(config, progress=False).status == "done"
    return config, checkpoint.load(config.out)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("online"), "straight")


def test_the_loop_learns_online_unless_the_levels_are_frozen(tmp_path, straight):
    _, online = straight
    _, frozen = _run(tmp_path, "frozen", online=False)
    _, first = _run(tmp_path, "first", first_order=True)
    for other in (frozen, first):
        assert any(not torch.equal(online["model"][k], other["model"][k]) for k in online["model"])
    assert online["history"][-1]["bin0/loss"] != frozen["history"][-1]["bin0/loss"]


def test_the_loop_truncates_the_outer_gradient_when_asked(tmp_path, straight):
    _, whole = straight
    _, same = _run(tmp_path, "whole-word", truncate=7)
    _, cut = _run(tmp_path, "cut", truncate=2)
    for k in whole["model"]:
        torch.testing.assert_close(same["model"][k], whole["model"][k], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(cut["model"][k], whole["model"][k], rtol=1e-5, atol=1e-6)
               for k in whole["model"])


def test_an_online_run_resumes_bit_for_bit(tmp_path, straight):
    config, reference = straight
    half = replace(config, out=str(tmp_path / "half"), steps=2)
    assert loop.run(half, progress=False).status == "done"
    assert loop.run(replace(half, steps=4), resume=True, progress=False).status == "done"
    resumed = checkpoint.load(half.out)
    for k in reference["model"]:
        assert torch.equal(resumed["model"][k], reference["model"][k]), k


def test_two_processes_learning_online_take_one_process_steps(tmp_path, straight):
    config, one = straight
    _, two = _run(tmp_path, "two", nproc=2)
    for k in one["model"]:
        torch.testing.assert_close(two["model"][k], one["model"][k], rtol=1e-5, atol=1e-6)
