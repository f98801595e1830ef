"""Errors that point at the spec text.

Every user-facing problem is a `Problem`: a span in a source file, what is wrong, what was
expected and a hint. `NLDSLError` carries one or more problems (the validator reports all of
them at once) and formats them the way compilers do::

    adam.nl:4:11: error: unknown name 'bta'
        |
      4 |   key g = bta * grad(W)
        |           ^~~
      expected: a hyper-parameter, state or context name
      hint: did you mean 'beta'?
"""
from __future__ import annotations

from dataclasses import dataclass, field

MAX_SHOWN = 20


@dataclass(frozen=True)
class Source:
    """A spec's text and the name used for it in messages (a path or `<string>`)."""

    text: str
    filename: str = "<string>"

    def line(self, number: int) -> str:
        lines = self.text.splitlines()
        return lines[number - 1] if 1 <= number <= len(lines) else ""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a spec, anchored at `line:col` .. `end_line:end_col` (1-based)."""

    message: str
    line: int
    col: int
    end_line: int | None = None
    end_col: int | None = None
    expected: str | None = None
    hint: str | None = None
    source: Source | None = field(default=None, compare=False)

    def format(self) -> str:
        filename = self.source.filename if self.source else "<string>"
        out = [f"{filename}:{self.line}:{self.col}: error: {self.message}"]
        if self.source is not None:
            text = self.source.line(self.line).rstrip("\n")
            gutter = " " * len(str(self.line))
            width = 1
            if self.end_line == self.line and self.end_col and self.end_col > self.col:
                width = self.end_col - self.col
            width = max(1, min(width, len(text) - self.col + 1))
            marker = " " * (self.col - 1) + "^" + "~" * (width - 1)
            out += [f"  {gutter} |", f"  {self.line} | {text}", f"  {gutter} | {marker}"]
        if self.expected:
            out.append(f"  expected: {self.expected}")
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)


class NLDSLError(Exception):
    """The root of every error nldsl raises for a bad spec or a bad request."""

    def __init__(self, problems: list[Problem] | str):
        if isinstance(problems, str):
            problems = [Problem(problems, 0, 0)]
        self.problems = list(problems)
        super().__init__(self._format())

    @property
    def line(self) -> int:
        return self.problems[0].line

    @property
    def column(self) -> int:
        return self.problems[0].col

    def _format(self) -> str:
        shown = [p.format() if p.line else p.message for p in self.problems[:MAX_SHOWN]]
        more = len(self.problems) - MAX_SHOWN
        if more > 0:
            shown.append(f"... and {more} more")
        count = len(self.problems)
        head = f"{count} problems" if count > 1 else ""
        return "\n\n".join(([head] if head else []) + shown)


class NLDSLSyntaxError(NLDSLError):
    """The text does not follow the grammar (grammar/nldsl.lark)."""


class NLDSLValidationError(NLDSLError):
    """The text parses but the spec it describes is inconsistent."""


class NLDSLCompileError(NLDSLError):
    """A valid spec that a compiler back end cannot (yet) lower."""


class NLDSLValueError(NLDSLError, ValueError):
    """A hyper-parameter value the caller passed breaks what the spec declares for it (its type,
    its range, or a period it sets). Also a ValueError, as torch's optimizers raise for a bad lr,
    so code written against `torch.optim` catches it unchanged."""
