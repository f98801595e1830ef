"""The training loop: resume continues bit for bit, Ctrl-C saves a checkpoint and stops
cleanly, a non-finite loss stops before its step and keeps the last good checkpoint."""
import json
import os
import signal
from dataclasses import replace

import pytest
import torch

from nldsl.train import checkpoint, loop
from nldsl.train.config import Config

TINY = dict(spec="deltanet", task="parity", steps=6, batch=4, seq=8, dim=16, depth=1,
            hparams={"heads": 2, "head_dim": 8}, eval_every=3)


def tiny(tmp_path, name="run", **options):
    return Config(**{**TINY, "out": str(tmp_path / name), **options})


def saved(config):
    return checkpoint.load(config.out)


def assert_same_run(a, b):
    """Same weights, optimizer state and evaluations (bar the clock's tokens/s)."""
    assert a["step"] == b["step"]
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name
    for (ka, va), (kb, vb) in zip(a["optimizer"]["state"].items(),
                                  b["optimizer"]["state"].items()):
        assert all(torch.equal(va[k], vb[k]) for k in va if torch.is_tensor(va[k]))
    drop = lambda h: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in h]
    assert drop(a["history"]) == drop(b["history"])


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Six steps in one go: what every stopped-and-resumed run must reproduce."""
    config = tiny(tmp_path_factory.mktemp("straight"))
    assert loop.run(config, progress=False).status == "done"
    return saved(config)


def test_resume_continues_bit_for_bit(tmp_path, straight):
    config = tiny(tmp_path, steps=3)
    loop.run(config, progress=False)
    outcome = loop.run(replace(config, steps=6), resume=True, progress=False)
    assert outcome.status == "done" and outcome.step == 6
    assert_same_run(saved(config), straight)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [3, 6]


def _interrupting(at_step, monkeypatch):
    """The task of the run, with a Ctrl-C arriving while the batch of `at_step` is drawn."""
    build = loop.build_task

    class Interrupting:
        def __init__(self, task):
            self.task = task

        def __getattr__(self, name):
            return getattr(self.task, name)

        def train_batch(self, seed, step, batch_size):
            if step == at_step:
                os.kill(os.getpid(), signal.SIGINT)
            return self.task.train_batch(seed, step, batch_size)

    monkeypatch.setattr(loop, "build_task", lambda config: Interrupting(build(config)))


def test_ctrl_c_saves_and_resume_continues(tmp_path, straight, monkeypatch):
    config = tiny(tmp_path)
    _interrupting(1, monkeypatch)
    outcome = loop.run(config, progress=False)
    assert outcome.status == "interrupted" and outcome.step == 2  # step 2 is finished first
    assert saved(config)["step"] == 2 and "--resume" in outcome.message
    assert (tmp_path / "run" / "report.md").read_text().count("interrupted") == 1
    monkeypatch.undo()
    assert loop.run(config, resume=True, progress=False).status == "done"
    assert_same_run(saved(config), straight)


def test_ctrl_c_restores_the_previous_handler(tmp_path, monkeypatch):
    before = signal.getsignal(signal.SIGINT)
    _interrupting(0, monkeypatch)
    loop.run(tiny(tmp_path, steps=1), progress=False)
    assert signal.getsignal(signal.SIGINT) is before


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real, calls = loop.loss, []

    def poisoned(logits, batch, count=None):
        if logits.requires_grad:  # training steps, not evaluations
            calls.append(1)
            if len(calls) == 5:
                return real(logits, batch, count) * float("nan")
        return real(logits, batch, count)

    monkeypatch.setattr(loop, "loss", poisoned)
    config = tiny(tmp_path)
    outcome = loop.run(config, progress=False)
    assert outcome.status == "diverged" and outcome.step == 4
    assert "not finite at step 5" in outcome.message and "step 3" in outcome.message
    kept = saved(config)
    assert kept["step"] == 3 and all(torch.isfinite(v).all() for v in kept["model"].values())
    assert "not finite" in (tmp_path / "run" / "report.md").read_text()


def test_report_files(tmp_path, straight):
    config = tiny(tmp_path, steps=2, eval_every=1)
    loop.run(config, progress=False)
    out = tmp_path / "run"
    report = (out / "report.md").read_text()
    for name in ["loss.png", "accuracy.png", "sequence_accuracy.png"]:
        assert (out / name).stat().st_size > 1000 and f"({name})" in report
    assert (out / "spec.svg").exists() or (out / "spec.dot").exists()
    assert "bin1/sequence" in report and "`deltanet`" in report
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_training_lowers_the_loss(straight):
    first, last = straight["history"][0], straight["history"][-1]
    assert last["train/loss"] < first["train/loss"]


def test_a_batch_that_does_not_split_is_an_error(tmp_path):
    from nldsl.train.distributed import Group

    with pytest.raises(ValueError, match="does not split"):
        loop.run(tiny(tmp_path, batch=5), Group(0, 2), progress=False)


def test_a_continual_stream_evaluates_every_task_trained_so_far(tmp_path):
    config = tiny(tmp_path, task="continual:tasks=2,steps_per_task=2,seq_len=8", steps=4,
                  eval_every=2)
    loop.run(config, progress=False)
    history = saved(config)["history"]
    assert [sorted(k for k in r if k.endswith("/token") and k != "train/token")
            for r in history] == [["task0/token"], ["task0/token", "task1/token"]]
