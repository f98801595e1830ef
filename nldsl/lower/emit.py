"""One code emitter with real indentation: lines and nested blocks, never spliced strings.

    out = Emitter()
    out.line("def f(x):")                   # or: with out.block("def f(x):"):
    with out.block("if x > 0:"):
        out.line("return x")
    out.text()  ->  "def f(x):\\nif x > 0:\\n    return x\\n"

A line carries no indentation and no newline of its own: the emitter owns both, so a block's
body moves as a whole and a multi-line value (`lines`) is indented line by line. Used by
`nldsl compile MODULE --show-code` (nldsl/module/show.py); torch-free.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class Emitter:
    def __init__(self, indent: str = "    "):
        self.indent, self.depth = indent, 0
        self._lines: list[str] = []

    def line(self, text: str = "") -> None:
        """One line at the current depth; "" is an empty line (no trailing spaces)."""
        if "\n" in text:
            raise ValueError(f"a line has no newline of its own: {text!r} (use lines())")
        self._lines.append(self.indent * self.depth + text if text else "")

    def lines(self, text: str) -> None:
        """Several lines at the current depth (a docstring, a function's source): the text's
        own relative indentation is kept."""
        for part in text.rstrip("\n").split("\n"):
            self.line(part.rstrip())

    @contextmanager
    def block(self, header: str | None = None) -> Iterator["Emitter"]:
        """`header` at this depth (when given), then the body one level deeper."""
        if header is not None:
            self.line(header)
        self.depth += 1
        try:
            yield self
        finally:
            self.depth -= 1

    def text(self) -> str:
        """Everything emitted, one newline after each line."""
        return "".join(line + "\n" for line in self._lines)
