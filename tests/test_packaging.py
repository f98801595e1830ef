"""Packaging: the README's set-up commands, CI running them, and a built wheel that carries the
grammar and the standard library (so an installed nldsl parses without the source tree)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from importlib import metadata
from pathlib import Path

from nldsl.language.parser import parse

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI_SCRIPT = ROOT / ".ci" / "run"


def readme_commands() -> list[list[str]]:
    """The lines of the README's first two fenced code blocks: its set-up commands."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", README.read_text(), flags=re.M | re.S)
    return [block.splitlines() for block in blocks[:2]]


def test_readme_opens_with_exactly_two_one_line_commands():
    text = README.read_text()
    title, blank, sentence, blank2, *rest = text.splitlines()
    assert title.startswith("# ") and sentence and not blank and not blank2
    assert rest[0].startswith("```"), "the set-up commands come right after the first sentence"
    (demo,), (tests,) = readme_commands()
    for command in (demo, tests):
        assert command.startswith('python3 -m venv .venv && .venv/bin/pip install "torch==2.13.*" && ')
    assert demo.endswith(".venv/bin/pip install -e . && .venv/bin/nldsl demo")
    assert tests.endswith('.venv/bin/pip install -e ".[test,peers]" && .venv/bin/python -m pytest')


def test_ci_runs_readme_command():
    _, (tests,) = readme_commands()
    script = CI_SCRIPT.read_text().splitlines()
    assert os.access(CI_SCRIPT, os.X_OK)
    assert "set -euo pipefail" in script
    # Last, so the chain's status is the script's (set -e does not stop inside an && chain).
    assert [line for line in script if line.strip()][-1] == tests


def test_the_installed_package_declares_what_the_readme_relies_on():
    """Read from the installed metadata (built from pyproject.toml), which works on Python 3.10."""
    requires = metadata.requires("nldsl")
    assert "torch>=2.4" in requires
    assert any(dep.startswith("lark[interegular]") for dep in requires)
    test_extra = {re.split(r"[<>=\[;]", dep)[0] for dep in requires if 'extra == "test"' in dep}
    assert {"pytest", "hypothesis"} <= test_extra
    (script,) = metadata.entry_points(group="console_scripts", name="nldsl")
    assert script.value == "nldsl.cli:main"


def build_wheel(tmp_path: Path) -> Path:
    """`pip wheel` from a copy of the sources, so building leaves the checkout untouched."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("nldsl", "grammar"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    # Reuse this environment's setuptools when it is recent enough (no network needed).
    has_setuptools = int(metadata.version("setuptools").split(".")[0]) >= 68
    isolation = ["--no-build-isolation"] if has_setuptools else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", *isolation,
                    "-w", str(tmp_path / "wheels"), "-q"], check=True, timeout=300)
    (wheel,) = (tmp_path / "wheels").glob("nldsl-*.whl")
    return wheel


PROBE = textwrap.dedent("""\
    import json, nldsl
    from nldsl.library import stdlib_names, stdlib_text
    from nldsl.language.parser import grammar_text, parse
    decl = parse("optimizer o(lr = 0.1 > 0) { level w every 1 step { W <- W - lr * grad(W) } }")
    print(json.dumps({
        "file": nldsl.__file__,
        "grammar_starts": grammar_text()[:20],
        "parsed": [decl.kind, decl.name, [level.name for level in decl.levels]],
        "stdlib": {name: parse(stdlib_text(name), name).name for name in stdlib_names()},
    }))
""")


def test_installed_wheel_ships_grammar_and_stdlib(tmp_path):
    wheel = build_wheel(tmp_path)
    stdlib = sorted(path.name for path in (ROOT / "nldsl" / "stdlib").glob("*.nl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "nldsl/grammar/nldsl.lark" in names
    assert sorted(n.split("/")[-1] for n in names if n.startswith("nldsl/stdlib/")
                  and n.endswith(".nl")) == stdlib

    target = tmp_path / "installed"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(target),
                    str(wheel), "-q"], check=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True, timeout=120)
    found = json.loads(probe.stdout)
    assert Path(found["file"]).is_relative_to(target), "imported nldsl from the checkout"
    assert found["grammar_starts"] == (ROOT / "grammar" / "nldsl.lark").read_text()[:20]
    assert found["parsed"] == ["optimizer", "o", ["w"]]
    assert found["stdlib"] == {name[:-3]: parse_name(ROOT / "nldsl" / "stdlib" / name)
                               for name in stdlib}


def parse_name(path: Path) -> str:
    return parse(path.read_text(), path.name).name


def test_every_subpackage_is_declared():
    """setuptools ships only the packages pyproject lists: a subpackage left out imports from a
    source checkout (the editable install finds it) but not from an installed wheel."""
    import tomllib

    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(init.parent.relative_to(ROOT).parts)
               for init in (ROOT / "nldsl").rglob("__init__.py")}
    assert on_disk - declared == set()
