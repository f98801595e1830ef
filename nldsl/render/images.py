"""DOT text to images with Graphviz's `dot` program (SVG, PNG, PDF).

Writing DOT needs only the Python package; images need the `dot` executable. Without it,
asking for an image raises an `NLDSLError` that says how to install it.
"""
from __future__ import annotations

from pathlib import Path

import graphviz

from nldsl.errors import NLDSLError

IMAGE_FORMATS = ("svg", "png", "pdf")
FORMATS = ("dot", *IMAGE_FORMATS)
MSG_NO_DOT = ("cannot write {path}: drawing a {fmt} needs Graphviz's `dot` program, which is not "
              "on PATH. Install it (Debian/Ubuntu: `apt-get install graphviz`; macOS: `brew "
              "install graphviz`; conda: `conda install -c conda-forge graphviz`), or write the "
              "diagram as DOT text with `-o diagram.dot`")
MSG_FORMAT = "cannot write {path}: unknown diagram format {suffix!r}; use one of {formats}"


def format_of(path: str | Path, formats: tuple[str, ...] = FORMATS) -> str:
    """`svg` for `out.svg`; an `NLDSLError` naming the known formats for anything else."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in formats:
        raise NLDSLError(MSG_FORMAT.format(path=path, suffix=suffix or "(none)",
                                           formats=", ".join("." + f for f in formats)))
    return suffix


def dot_to_image(dot_source: str, fmt: str, path: str | Path = "the diagram") -> bytes:
    """Lay out `dot_source` with the `dot` program and return the image in `fmt`."""
    try:
        return graphviz.Source(dot_source).pipe(format=fmt, engine="dot")
    except graphviz.ExecutableNotFound as missing:
        raise NLDSLError(MSG_NO_DOT.format(path=path, fmt=fmt.upper())) from missing
    except graphviz.CalledProcessError as failed:
        message = failed.stderr.decode(errors="replace") if failed.stderr else str(failed)
        raise NLDSLError(f"cannot write {path}: the `dot` program failed: {message}") from failed


def write_diagram(dot_source: str, path: str | Path) -> Path:
    """Write DOT text or, by the file's suffix, an image of it; returns the path written."""
    path = Path(path)
    fmt = format_of(path)
    if fmt == "dot":
        path.write_text(dot_source)
    else:
        path.write_bytes(dot_to_image(dot_source, fmt, path))
    return path
