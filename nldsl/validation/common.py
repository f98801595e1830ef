"""What every validation check shares: how a problem is anchored and the names in scope."""
from __future__ import annotations

import difflib
from collections.abc import Collection

from nldsl.language import ast
from nldsl.language.builtins import FUNCTIONS, IMPLICIT_NAMES, TASK
from nldsl.errors import Problem, Source
from nldsl.graph import LevelGraph


#: How many (name, candidate) comparisons `suggest` makes for one spec. Each costs microseconds
#: and a spec with N unknown names and N definitions would need N * N of them (10,000 unknown
#: names took 47 s); past the budget a problem keeps its generic hint.
SUGGESTION_BUDGET = 200_000


class Checker:
    """Collects problems for one spec; each check module adds to `problems`."""

    def __init__(self, graph: LevelGraph, source: Source):
        self.graph = graph
        self.decl = graph.decl
        self.source = source
        self.problems: list[Problem] = []
        self._suggestion_budget = SUGGESTION_BUDGET
        #: validation/shapes.py's ShapeChecker, once run (shapes.shape_checker): shared by the checks
        self.shape_checker = None

    def report(self, node: ast.Node | ast.Span, message: str, expected: str | None = None,
               hint: str | None = None) -> None:
        span = node if isinstance(node, ast.Span) else node.span
        line, col = (span.line, span.col) if span.line else (1, 1)
        self.problems.append(Problem(message, line, col, span.end_line or None, span.end_col or None,
                                     expected=expected, hint=hint, source=self.source))

    def implicit_names(self) -> dict[str, str]:
        return IMPLICIT_NAMES[self.decl.kind]

    def defined_names(self) -> set[str]:
        names = set(self.graph.hparams) | set(self.implicit_names())
        for level in self.graph.levels.values():
            names |= set(level.states) | set(level.contexts) | set(level.reads)
        return names

    def suggest(self, name: str, candidates: Collection[str]) -> str | None:
        """`did you mean ...?` for the closest candidate, while the spec's budget lasts."""
        if len(candidates) > self._suggestion_budget:
            return None
        self._suggestion_budget -= len(candidates)
        close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=0.6)
        return f"did you mean {close[0]!r}?" if close else None


def is_builtin(name: str) -> bool:
    return name in FUNCTIONS or name == TASK
