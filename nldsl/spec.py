"""`Spec`: a parsed, built and validated spec, the object every back end starts from."""
from __future__ import annotations

import os
from dataclasses import dataclass

from nldsl.language import ast
from nldsl.build import build
from nldsl.errors import Source
from nldsl.graph import LevelGraph
from nldsl.library import resolve
from nldsl.language.parser import parse
from nldsl.validation.validate import validate


@dataclass(frozen=True)
class Spec:
    """A valid spec: its source text, its AST and its level graph."""

    source: Source
    decl: ast.SpecDecl
    graph: LevelGraph

    @property
    def name(self) -> str:
        return self.decl.name

    @property
    def kind(self) -> str:
        return self.decl.kind

    @property
    def text(self) -> str:
        return self.source.text

    def to_dot(self, detail: str = "compact", direction: str = "TB") -> str:
        """The nesting diagram as DOT text (`nldsl.render.dot.to_dot`)."""
        from nldsl.render.dot import to_dot

        return to_dot(self, detail=detail, direction=direction)

    def shapes(self) -> dict[str, tuple[str, ...] | None]:
        """Inferred feature dims of every context and read (see `validation/shapes.py's infer_shapes`)."""
        from nldsl.validation.shapes import infer_shapes

        return infer_shapes(self.graph)

    def __str__(self) -> str:
        from nldsl.language.printer import format_spec

        return format_spec(self.decl)


def load(name_or_path_or_text: str | os.PathLike) -> Spec:
    """Parse, build and validate a spec: a stdlib name, a path (a `str` or a `pathlib.Path`),
    or spec text; `library.resolve` says how a string is told apart.

    Raises `NLDSLError` listing every problem, each with file:line:col and a caret.
    """
    text, filename = resolve(name_or_path_or_text)
    source = Source(text, filename)
    decl = parse(text, filename)
    return Spec(source, decl, validate(build(decl), source))
