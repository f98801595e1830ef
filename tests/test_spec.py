"""`nldsl.load` and the `Spec` it returns: parse + build + validate, and the views of a spec."""
from __future__ import annotations

import pytest

import nldsl
from nldsl.errors import NLDSLSyntaxError, NLDSLValidationError
from nldsl.parser import parse

TEXT = """# Heavy ball, in a file of its own.
optimizer heavy(lr = 0.1 > 0, beta = 0.9 in [0, 1)) {
  level weights every 1 step {
    W <- W - lr * m
  }
  level moments every 1 step {
    key g = grad(W)
    state m like W = 0
    m: minimize -dot(m, g) by gd(lr = 1, decay = beta)
  }
}
"""


@pytest.mark.parametrize("source", ["text", "path"])
def test_load_from_text_or_path(source, tmp_path):
    if source == "path":
        path = tmp_path / "heavy.nl"
        path.write_text(TEXT)
        spec = nldsl.load(str(path))
        assert spec.source.filename == str(path)
    else:
        spec = nldsl.load(TEXT)
    assert (spec.name, spec.kind, spec.text) == ("heavy", "optimizer", TEXT)
    assert list(spec.graph.levels) == ["weights", "moments"]
    assert spec.graph.update_order() == ["moments", "weights"]


def test_str_is_the_canonical_text_and_parses_back():
    spec = nldsl.load(TEXT)
    assert parse(str(spec)) == spec.decl


def test_to_dot_draws_one_cluster_per_level():
    dot = nldsl.load(TEXT).to_dot()
    assert dot.startswith("digraph") and dot.count("subgraph cluster") == 2


def test_errors_are_syntax_or_validation_errors_with_the_filename():
    with pytest.raises(NLDSLSyntaxError):
        nldsl.load(TEXT.replace("by gd", "gd"))
    with pytest.raises(NLDSLValidationError) as caught:
        nldsl.load(TEXT.replace("decay = beta", "decay = 2"))
    assert str(caught.value).startswith("<string>:9:") and "decay outside [0, 1]" in str(caught.value)
