"""The run's builders: `--seq` as each task's training length, a seeded model, the outer
optimizer as a compiled nldsl spec."""
import pytest
import torch

from nldsl.train.config import Config, build_model, build_optimizer, build_task


@pytest.mark.parametrize("task,attribute,value", [
    ("parity", "hi", 12), ("mqar", "seq_len", 12), ("needle", "seq_len", 12),
    ("mqar:seq_len=40", "seq_len", 40)], ids=["language", "mqar", "needle", "option-wins"])
def test_seq_is_the_training_length(task, attribute, value):
    built = build_task(Config("deltanet", task, seq=12))
    assert getattr(built, attribute) == value


def test_seq_reaches_the_continual_tasks():
    stream = build_task(Config("deltanet", "continual:tasks=2", seq=12))
    assert [t.seq_len for t in stream.tasks] == [12, 12]


def test_the_model_is_seeded():
    config = Config("linear_attention", "parity", dim=8, depth=1,
                    hparams={"heads": 2, "head_dim": 4})
    a, b = build_model(config, 3), build_model(config, 3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_the_optimizer_is_an_nldsl_spec_with_its_options():
    config = Config("linear_attention", "parity", dim=8, depth=1, lr=0.5,
                    optimizer="sgd:momentum=0.9", hparams={"heads": 2, "head_dim": 4})
    opt = build_optimizer(config, build_model(config, 3))
    assert isinstance(opt, torch.optim.Optimizer) and "nldsl" in type(opt).__module__
    assert opt.param_groups[0]["lr"] == 0.5 and opt.param_groups[0]["momentum"] == 0.9


def test_config_round_trips_through_a_dict():
    config = Config("deltanet", "aa", hparams={"heads": 2})
    assert Config.from_dict({**config.to_dict(), "unknown": 1}) == config
