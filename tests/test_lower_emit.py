"""nldsl/lower/emit.py: lines and nested blocks, indentation owned by the emitter."""
from __future__ import annotations

import pytest

from nldsl.lower.emit import Emitter


def test_blocks_nest_by_indentation():
    out = Emitter()
    with out.block("def f(x):"):
        with out.block("if x > 0:"):
            out.line("return x")
        out.line("return -x")
    out.line("f(1)")
    assert out.text() == "def f(x):\n    if x > 0:\n        return x\n    return -x\nf(1)\n"


def test_a_block_without_header_only_indents():
    out = Emitter(indent="  ")
    with out.block():
        out.line("a")
    assert out.text() == "  a\n"


def test_empty_lines_carry_no_indentation():
    out = Emitter()
    with out.block("x:"):
        out.line()
        out.line("y")
    assert out.text() == "x:\n\n    y\n"


def test_lines_keep_their_relative_indentation():
    out = Emitter()
    with out.block("class A:"):
        out.lines("def f():\n    return 1\n")
    assert out.text() == "class A:\n    def f():\n        return 1\n"


def test_depth_is_restored_after_an_error_inside_a_block():
    out = Emitter()
    with pytest.raises(KeyError):
        with out.block("x:"):
            raise KeyError
    out.line("y")
    assert out.text() == "x:\ny\n"


def test_a_line_with_a_newline_is_refused():
    with pytest.raises(ValueError, match="use lines"):
        Emitter().line("a\nb")


def test_nothing_emitted_is_empty_text():
    assert Emitter().text() == ""
