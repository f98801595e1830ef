"""Error formatting: file:line:col, the source line, a caret under the span, expected, hint."""
from __future__ import annotations

import pytest

from nldsl.errors import (MAX_SHOWN, NLDSLCompileError, NLDSLError, NLDSLSyntaxError,
                          NLDSLValidationError, Problem, Source)

SOURCE = Source("optimizer o() {\n  key g = bta * grad(W)\n}\n", "adam.nl")


def test_format_with_caret_and_tildes():
    problem = Problem("unknown name 'bta'", 2, 11, 2, 14, expected="a name", hint="did you mean "
                      "'beta'?", source=SOURCE)
    assert problem.format() == "\n".join([
        "adam.nl:2:11: error: unknown name 'bta'",
        "    |",
        "  2 |   key g = bta * grad(W)",
        "    |           ^~~",
        "  expected: a name",
        "  hint: did you mean 'beta'?",
    ])


@pytest.mark.parametrize("end_line, end_col, marker", [
    (None, None, "^"),           # no end: a single caret
    (3, 2, "^"),                 # a span over several lines: a caret at its start
    (2, 99, "^" + "~" * (len(SOURCE.line(2)) - 9)),  # clipped at the end of the line
], ids=["point", "multi-line", "clipped"])
def test_caret_width(end_line, end_col, marker):
    text = Problem("m", 2, 9, end_line, end_col, source=SOURCE).format()
    assert text.splitlines()[3] == "    |         " + marker


def test_format_without_source_is_one_line():
    assert Problem("boom", 3, 4).format() == "<string>:3:4: error: boom"


def test_gutter_grows_with_the_line_number():
    source = Source("\n" * 11 + "x\n")
    lines = Problem("m", 12, 1, source=source).format().splitlines()
    assert lines[1:4] == ["     |", "  12 | x", "     | ^"]


def test_error_with_several_problems_counts_them():
    problems = [Problem(f"p{i}", i + 1, 1, source=SOURCE) for i in range(2)]
    error = NLDSLValidationError(problems)
    assert str(error).startswith("2 problems\n\nadam.nl:1:1: error: p0")
    assert (error.line, error.column) == (1, 1)


def test_long_lists_are_cut():
    problems = [Problem(f"p{i}", 1, 1) for i in range(MAX_SHOWN + 3)]
    assert str(NLDSLError(problems)).endswith("... and 3 more")


def test_plain_message_error():
    error = NLDSLError("no spec file at 'x.nl'")
    assert str(error) == "no spec file at 'x.nl'" and error.problems[0].message == str(error)


@pytest.mark.parametrize("cls", [NLDSLSyntaxError, NLDSLValidationError, NLDSLCompileError],
                         ids=lambda c: c.__name__)
def test_one_root(cls):
    assert issubclass(cls, NLDSLError)


def test_source_line_out_of_range_is_empty():
    assert SOURCE.line(0) == "" and SOURCE.line(99) == ""
