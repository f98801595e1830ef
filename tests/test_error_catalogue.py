"""The catalogue of bad specs: each `tests/errors/NAME.nl` must fail to load with exactly the
message in `NAME.expected` (file:line:col, the source line, the caret, what was expected, a hint).
A spec with a `NAME.values` file (a Python dict literal) loads, and those hyper-parameter values,
passed as a caller would, fail `check_hparam_values` with that message instead.

The golden files are the user-facing error messages, reviewed by hand. To rewrite them after a
deliberate change of wording, run `NLDSL_BLESS=1 pytest tests/test_error_catalogue.py` and
read the diff before committing it.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

import nldsl
from nldsl.validation.values import check_hparam_values
from nldsl.errors import NLDSLSyntaxError, NLDSLValidationError, NLDSLValueError

ERRORS = Path(__file__).parent / "errors"
CASES = sorted(p.stem for p in ERRORS.glob("*.nl"))
BLESS = os.environ.get("NLDSL_BLESS") == "1"


def _message(name: str) -> tuple[nldsl.NLDSLError, str]:
    # A relative path keeps the golden files independent of where the checkout lives.
    path = os.path.relpath(ERRORS / f"{name}.nl")
    values = ERRORS / f"{name}.values"
    with pytest.raises(nldsl.NLDSLError) as caught:
        spec = nldsl.load(path)
        if values.exists():
            check_hparam_values(spec, ast.literal_eval(values.read_text()))
    return caught.value, str(caught.value).replace(path, f"{name}.nl")


def test_catalogue_is_large_enough():
    assert len(CASES) >= 35


@pytest.mark.parametrize("name", CASES)
def test_golden_message(name):
    error, message = _message(name)
    golden = ERRORS / f"{name}.expected"
    if BLESS:
        golden.write_text(message + "\n")
    assert golden.exists(), f"no golden file for {name}; run with NLDSL_BLESS=1 and review it"
    assert message == golden.read_text().rstrip("\n")


@pytest.mark.parametrize("name", CASES)
def test_error_class_matches_the_stage(name):
    error, _ = _message(name)
    expected = NLDSLSyntaxError if name.startswith("syntax_") else NLDSLValidationError
    if (ERRORS / f"{name}.values").exists():
        expected = NLDSLValueError
    assert type(error) is expected


@pytest.mark.parametrize("name", CASES)
def test_every_problem_is_located_and_explained(name):
    error, _ = _message(name)
    source_lines = (ERRORS / f"{name}.nl").read_text().splitlines()
    for problem in error.problems:
        assert 1 <= problem.line <= len(source_lines)
        assert 1 <= problem.col <= len(source_lines[problem.line - 1]) + 1
        assert problem.expected and problem.hint


def test_several_problems_are_reported_together():
    error, message = _message("several_problems")
    assert len(error.problems) == 4
    assert message.startswith("4 problems\n")
    lines = [p.line for p in error.problems]
    assert lines == sorted(lines)


def test_every_golden_file_has_a_spec():
    assert sorted(p.stem for p in ERRORS.glob("*.expected")) == CASES


def test_every_values_file_has_a_spec():
    assert {p.stem for p in ERRORS.glob("*.values")} <= set(CASES)
