"""`nldsl train` from the command line: a run, its resume, and mistakes as messages."""
import json

import pytest

from nldsl.cli import build_parser, main
from nldsl.train.cli import _value, config_from

TINY = ["deltanet", "--task", "parity", "--steps", "2", "--batch", "4", "--seq", "6",
        "--dim", "8", "--depth", "1", "-p", "heads=2", "-p", "head_dim=4", "--no-progress"]


def test_a_run_and_its_resume(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *TINY, "--out", out, "--eval-every", "1"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert main(["train", *TINY, "--out", out, "--steps", "3", "--resume"]) == 0
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert steps == [1, 2, 3]


def test_resume_cannot_change_the_run(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *TINY, "--out", out]) == 0
    assert main(["train", *TINY, "--out", out, "--lr", "0.1", "--resume"]) == 1
    assert "cannot change lr" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--task", "nope"], "unknown task 'nope'"),
    (["--task", "parity", "--resume", "--out", "/nonexistent/x"], "no checkpoint"),
    (["--task", "parity", "--optimizer", "sgd:momentom=0.9", "--steps", "1"], "momentom")],
    ids=["unknown-task", "nothing-to-resume", "bad-optimizer-option"])
def test_mistakes_are_messages(argv, message, tmp_path, capsys):
    argv = argv if "--out" in argv else argv + ["--out", str(tmp_path / "r")]
    assert main(["train", "deltanet", "--dim", "8", "--no-progress", *argv]) == 1
    assert message in capsys.readouterr().err


def test_the_out_folder_defaults_to_spec_and_task():
    args = build_parser().parse_args(["train", "examples/x.nl", "--task", "mqar:pairs=2"])
    assert config_from(args).out.endswith("runs/x-mqar")


def test_params_become_hparams():
    args = build_parser().parse_args(["train", "deltanet", "--task", "aa", "-p", "heads=2",
                                      "-p", "block_size=16"])
    assert config_from(args).hparams == {"heads": 2, "block_size": 16}


@pytest.mark.parametrize("text,value", [("2", 2), ("0.5", 0.5), ("true", True),
                                        ("silu", "silu")], ids=["int", "float", "bool", "str"])
def test_values(text, value):
    assert _value(text) == value and type(_value(text)) is type(value)


@pytest.mark.parametrize("flags,online,first_order", [
    ([], True, False), (["--frozen-levels"], False, False), (["--first-order"], True, True)],
    ids=["default", "frozen-levels", "first-order"])
def test_online_level_flags(flags, online, first_order):
    config = config_from(build_parser().parse_args(["train", "hope", "--task", "aa", *flags]))
    assert (config.online, config.first_order) == (online, first_order)
