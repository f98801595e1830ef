"""The front end (parse, build, validate, print, render to DOT) imports no torch."""
from __future__ import annotations

import subprocess
import sys

import pytest

FRONT_END = """
import sys
import nldsl, nldsl.cli, nldsl.language.printer
for name in nldsl.library.stdlib_names():
    spec = nldsl.load(name)
    spec.to_dot()
    str(spec)
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""


@pytest.mark.parametrize("code", [pytest.param(FRONT_END, id="load-print-and-draw-every-stdlib-spec")])
def test_front_end_loads_no_torch(code):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
