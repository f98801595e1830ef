"""Data parallelism on torch.distributed (gloo, CPU): two processes sharing the global batch
take the steps one process takes, and their checkpoint resumes in one process."""
from dataclasses import replace

import pytest
import torch

from nldsl.train import checkpoint
from nldsl.train.config import Config
from nldsl.train.distributed import Group, launch

# Variable-length words (parity up to 8): the ranks' shares of the positions differ, which the
# global-mean loss must weigh right.
TINY = dict(spec="deltanet", task="parity", steps=2, batch=4, seq=8, dim=16, depth=1,
            hparams={"heads": 2, "head_dim": 8}, eval_every=1)


def assert_close_runs(a, b):
    assert a["step"] == b["step"]
    for name in a["model"]:
        torch.testing.assert_close(a["model"][name], b["model"][name], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two steps on one process and on two."""
    root = tmp_path_factory.mktemp("ddp")
    one = Config(**TINY, out=str(root / "one"))
    two = replace(one, out=str(root / "two"), nproc=2)
    assert launch(one, progress=False).status == "done"
    assert launch(two, progress=False).status == "done"
    return one, two


def test_two_processes_take_one_process_steps(runs):
    one, two = (checkpoint.load(c.out) for c in runs)
    assert two["step"] == 2
    assert_close_runs(two, one)
    assert two["history"][0]["train/loss"] == pytest.approx(one["history"][0]["train/loss"],
                                                            rel=1e-5)


def test_a_two_process_checkpoint_resumes_in_one_process(runs):
    one, two = runs
    for config in runs:
        assert launch(replace(config, nproc=1, steps=4), resume=True, progress=False).status == "done"
    assert_close_runs(checkpoint.load(two.out), checkpoint.load(one.out))
    assert checkpoint.load(two.out)["step"] == 4


def test_rows_split_the_global_batch():
    assert [Group(r, 4).rows(8) for r in range(4)] == [(0, 2), (2, 4), (4, 6), (6, 8)]
