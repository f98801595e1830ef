"""Nesting diagrams: every spec drawn as the paper draws it, from its level graph.

    nldsl.render("titans", "titans.svg")                 # .dot, .svg, .png or .pdf
    nldsl.render(spec, "t.png", timeline=True)           # which levels write at each unit
    spec.to_dot(detail="full", direction="LR")           # the DOT text itself

`nldsl.render` (the function, exported by `nldsl`) shadows this package's name on `nldsl`;
import its modules with `from nldsl.render.dot import to_dot`.
"""
from __future__ import annotations

import os
from pathlib import Path

from nldsl.render.dot import DETAILS, DIRECTIONS, to_dot
from nldsl.render.images import FORMATS, write_diagram
from nldsl.render.timeline import write_timeline

__all__ = ["DETAILS", "DIRECTIONS", "FORMATS", "render", "to_dot", "write_timeline"]


def render(spec, path: str | Path, *, detail: str = "compact", direction: str = "TB",
           timeline: bool = False, window: int | None = None, legend: bool = True) -> Path:
    """Draw `spec` (a `Spec`, or a name, path or text for `nldsl.load`) to `path`.

    The file's suffix picks the format: `.dot` (DOT text, needs no Graphviz program), `.svg`,
    `.png`, `.pdf` (need Graphviz's `dot`). With `timeline=True`, draw instead which levels
    write at each step or token over `window` units, with matplotlib (`.png`, `.svg`, `.pdf`).
    """
    if isinstance(spec, (str, os.PathLike)):
        from nldsl.spec import load

        spec = load(spec)
    if timeline:
        return write_timeline(spec, path, window)
    return write_diagram(to_dot(spec, detail=detail, direction=direction, legend=legend), path)
