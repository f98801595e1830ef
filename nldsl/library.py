"""The standard library and spec loading: by name, by path, or from a string."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

from nldsl.errors import NLDSLError

SUFFIX = ".nl"


def stdlib_names() -> list[str]:
    """Every spec that ships with the package, sorted."""
    folder = resources.files("nldsl.stdlib")
    return sorted(p.name[: -len(SUFFIX)] for p in folder.iterdir() if p.name.endswith(SUFFIX))


def stdlib_text(name: str) -> str:
    path = resources.files("nldsl.stdlib").joinpath(name + SUFFIX)
    if not path.is_file():
        raise NLDSLError(f"no standard-library spec named {name!r}; `nldsl list` shows them: "
                         f"{', '.join(stdlib_names())}")
    return path.read_text()


def description(text: str) -> str:
    """The first line of a spec's header comment: its one-line description."""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            return stripped.lstrip("#").strip()
        if stripped:
            break
    return ""


def resolve(name_or_path_or_text: str) -> tuple[str, str]:
    """(text, filename) for a stdlib name, a path to a spec file, or spec text itself."""
    value = name_or_path_or_text
    if "{" in value or "\n" in value:
        return value, "<string>"
    if value.endswith(SUFFIX) or "/" in value or Path(value).is_file():
        path = Path(value)
        if not path.is_file():
            raise NLDSLError(f"no spec file at {value!r}")
        return path.read_text(), str(path)
    return stdlib_text(value), f"{value}{SUFFIX}"
