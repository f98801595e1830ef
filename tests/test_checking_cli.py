"""`nldsl test` (nldsl/checking/cli.py): the summary table, exit 0 when every check passes or
does not apply, exit 1 with the counterexample printed when one fails or a spec is bad."""
import argparse

import pytest

from nldsl.checking import cli   # not `import test_arguments`: pytest would collect it
from nldsl.lower import derive


pytestmark = pytest.mark.usefixtures("quick_shrinking")


def parse(*argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nldsl test")
    cli.test_arguments(parser)
    return parser.parse_args(list(argv))


def rows(out: str) -> dict:
    """(spec, check) -> result, from the table."""
    table = out.split("\n\n")[0].splitlines()[2:]
    return {tuple(line.split()[:2]): line.split()[2] for line in table}


def test_passing_checks_and_not_applicable_ones_exit_0(capsys):
    code = cli.run_test(parse("sgd", "examples/huber_delta.nl", "--examples", "2",
                          "--checks", "derivations,twin"))
    out = capsys.readouterr().out
    assert code == 0
    assert rows(out) == {("sgd", "derivations"): "pass", ("sgd", "twin"): "pass",
                         ("examples/huber_delta.nl", "derivations"): "pass",
                         ("examples/huber_delta.nl", "twin"): "n/a"}
    assert "a module has no torch twin" in out
    assert out.rstrip().endswith("4 of 4 checks passed or do not apply")


def test_a_planted_wrong_closed_form_exits_1_with_the_counterexample(capsys, monkeypatch):
    original = derive.gd_value
    monkeypatch.setattr(derive, "gd_value", lambda state, grad, lr, decay, ema=False:
                        original(state, grad, lr, decay if ema else derive.num(1), ema))
    code = cli.run_test(parse("sgd", "--examples", "20", "--checks", "derivations"))
    out = capsys.readouterr().out
    assert code == 1
    assert rows(out) == {("sgd", "derivations"): "FAIL"}
    assert "sgd, derivations: sgd: the derived update of buf" in out
    assert "autograd buf after the step" in out
    assert out.rstrip().endswith("0 of 1 checks passed or do not apply; 1 failed")


def test_a_spec_that_does_not_compile_is_an_error_once(capsys, tmp_path, monkeypatch):
    from test_optim_codegen import REFUSED
    (tmp_path / "refused.nl").write_text(REFUSED)
    monkeypatch.chdir(tmp_path)
    code = cli.run_test(parse("refused.nl", "--examples", "1", "--checks",
                              "derivations,invariants"))
    out = capsys.readouterr().out
    assert code == 1
    assert rows(out) == {("refused.nl", "derivations"): "error",
                         ("refused.nl", "invariants"): "error"}
    assert out.count("`minimize task by momentum` is not compiled") == 2  # one note: 2 problems
    assert "as above" in out


def test_a_missing_file_is_an_error(capsys):
    assert cli.run_test(parse("no/such/spec.nl", "--checks", "schedules")) == 1
    assert "no/such/spec.nl  (load)  error" in capsys.readouterr().out


def test_an_explicit_twin_class_is_used(capsys):
    code = cli.run_test(parse("adamw", "--examples", "2", "--checks", "twin", "--twin", "torch.optim.AdamW"))
    assert code == 0 and "AdamW (reference schedule)" in capsys.readouterr().out


def test_an_unknown_check_is_a_command_line_error(capsys):
    with pytest.raises(SystemExit):
        parse("sgd", "--checks", "derivations,speed")
    assert "unknown check speed; choose from derivations,schedules,twin,invariants" in \
        capsys.readouterr().err


def test_twin_classes_resolve_by_name():
    import torch

    assert cli.twin_class("Adam") is torch.optim.Adam and cli.twin_class("torch.optim.SGD") is torch.optim.SGD
    with pytest.raises(ValueError, match="no optimizer class 'Adamm'"):
        cli.twin_class("Adamm")


def test_against_adds_an_equivalence_row_per_module(capsys):
    code = cli.run_test(parse("examples/huber_delta_wrong.nl", "sgd", "--against",
                              "examples/huber_delta.nl", "--checks", "derivations", "--examples", "5"))
    out = capsys.readouterr().out
    assert code == 1
    assert rows(out)[("examples/huber_delta_wrong.nl", "equivalent")] == "FAIL"
    assert rows(out)[("sgd", "equivalent")] == "n/a"
    assert "huber_delta and huber_delta_wrong differ in" in out


def test_a_case_over_the_deadline_fails_with_advice(capsys):
    assert cli.run_test(parse("linear_attention", "--checks", "invariants", "--deadline", "1",
                              "--examples", "2")) == 1
    out = capsys.readouterr().out
    assert rows(out) == {("linear_attention", "invariants"): "FAIL"}
    assert "ms, over the deadline of 1 ms" in out and "nldsl test --deadline MS" in out


def test_nldsl_test_is_a_registered_command(capsys):
    """`nldsl test` goes through the same parser as every other subcommand."""
    from nldsl.cli import main

    assert main(["test", "sgd", "--examples", "2", "--checks", "twin"]) == 0
    assert rows(capsys.readouterr().out) == {("sgd", "twin"): "pass"}


def test_the_command_line_loads_no_torch_until_a_check_runs():
    """Registering `nldsl test` must not make every `nldsl` call import torch and hypothesis."""
    import subprocess
    import sys

    code = "import sys, nldsl.cli; print('torch' in sys.modules, 'hypothesis' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
