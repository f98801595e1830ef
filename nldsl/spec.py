"""`Spec`: a parsed, built and validated spec, the object every back end starts from."""
from __future__ import annotations

from dataclasses import dataclass

from nldsl import ast
from nldsl.errors import Source
from nldsl.library import resolve
from nldsl.parser import parse


@dataclass(frozen=True)
class Spec:
    """A valid spec: its source, its AST and its level graph."""

    source: Source
    decl: ast.SpecDecl

    @property
    def name(self) -> str:
        return self.decl.name

    @property
    def kind(self) -> str:
        return self.decl.kind


def load(name_or_path_or_text: str) -> Spec:
    """Parse, build and validate a spec; raise `NLDSLError` listing every problem."""
    text, filename = resolve(name_or_path_or_text)
    decl = parse(text, filename)
    return Spec(Source(text, filename), decl)
