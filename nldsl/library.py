"""The standard library and spec loading: by name, by path, or from a string."""
from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

from nldsl.errors import NLDSLError

SUFFIX = ".nl"
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")   # the grammar's NAME token


def stdlib_names() -> list[str]:
    """Every spec that ships with the package, sorted."""
    folder = resources.files("nldsl.stdlib")
    return sorted(p.name[: -len(SUFFIX)] for p in folder.iterdir() if p.name.endswith(SUFFIX))


def stdlib_text(name: str) -> str:
    if name not in stdlib_names():
        raise NLDSLError(f"no standard-library spec named {name!r}; `nldsl list` shows them: "
                         f"{', '.join(stdlib_names())}")
    return resources.files("nldsl.stdlib").joinpath(name + SUFFIX).read_text()


def description(text: str) -> str:
    """The first line of a spec's header comment: its one-line description."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            return stripped.lstrip("#").strip()
        if stripped:
            break
    return ""


def resolve(spec: str | os.PathLike) -> tuple[str, str]:
    """(text, filename) for a stdlib name, a path to a spec file, or spec text itself.

    One rule, so that no kind of argument is mistaken for another:
    - a `pathlib.Path` (any `os.PathLike`) is a path;
    - a one-line string naming an existing file is that file (`weird{1}.nl` too);
    - a string that is one NAME token of the grammar (`adam`) is a standard-library name;
    - a one-line string that ends in `.nl`, or has a `/` and no whitespace, is a path;
    - anything else is spec text, whose errors are located in `<string>` (a one-line spec,
      a comment, an empty string: none of them is looked up by name).
    A directory is an error of its own, never looked up as a stdlib name (though a stdlib
    name still means the stdlib spec when a folder of that name sits in the working directory).
    """
    if isinstance(spec, os.PathLike):
        return _read(Path(spec))
    if not isinstance(spec, str):
        raise TypeError(f"a spec is a name, a path or spec text, not a {type(spec).__name__}")
    one_line = spec != "" and "\n" not in spec   # Path("") is the current directory
    if one_line and _safely(Path(spec).is_file):
        return _read(Path(spec))
    if NAME.fullmatch(spec) and (spec in stdlib_names() or not _safely(Path(spec).is_dir)):
        return stdlib_text(spec), f"{spec}{SUFFIX}"
    if one_line and (_safely(Path(spec).is_dir) or spec.endswith(SUFFIX) or
                     ("/" in spec and not any(c.isspace() for c in spec))):
        return _read(Path(spec))
    return spec, "<string>"


def _safely(test) -> bool:
    """A file-system test that is False, not an exception, for a string no path can be (too
    long for the file system, a NUL byte): such a string is spec text."""
    try:
        return test()
    except (OSError, ValueError):
        return False


def _read(path: Path) -> tuple[str, str]:
    if _safely(path.is_dir):
        raise NLDSLError(f"{str(path)!r} is a directory, not a spec file; name a .nl file "
                         "inside it, or a standard-library spec (`nldsl list`)")
    if not _safely(path.is_file):
        raise NLDSLError(f"no spec file at {str(path)!r}")
    return path.read_text(), str(path)
