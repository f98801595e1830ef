"""Spec loading: by stdlib name, by path, from text; names and one-line descriptions."""
from __future__ import annotations

import pytest

from nldsl.errors import NLDSLError
from nldsl.library import description, resolve, stdlib_names, stdlib_text

ISSUE_NAMES = ["sgd", "momentum", "adam", "adamw", "adagrad", "rmsprop", "muon", "dgd",
               "delta_momentum", "dmgd", "m3", "linear_attention", "deltanet", "gated_deltanet",
               "titans", "moneta", "yaad", "memora", "atlas", "cms", "self_modifying_titans", "hope",
               "hope_attention"]


def test_the_stdlib_holds_every_algorithm_the_design_names():
    names = stdlib_names()
    assert set(ISSUE_NAMES) <= set(names)
    assert {"cms_nested", "cms_independent"} <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", ISSUE_NAMES)
def test_every_stdlib_spec_has_a_one_line_description(name):
    text = stdlib_text(name)
    assert text.startswith("#") and len(description(text)) > 10


def test_resolve_a_name_a_path_and_text(tmp_path):
    text, filename = resolve("adam")
    assert filename == "adam.nl" and text == stdlib_text("adam")
    path = tmp_path / "mine.nl"
    path.write_text(text)
    assert resolve(str(path)) == (text, str(path))
    inline = "optimizer o() { level w every 1 step { W <- W } }"
    assert resolve(inline) == (inline, "<string>")


@pytest.mark.parametrize("value, message", [
    pytest.param("adamm", "no standard-library spec named 'adamm'", id="unknown-name"),
    pytest.param("missing/file.nl", "no spec file at 'missing/file.nl'", id="missing-path"),
])
def test_unknown_names_and_paths_are_user_errors(value, message):
    with pytest.raises(NLDSLError, match=message):
        resolve(value)


@pytest.mark.parametrize("text, expected", [
    pytest.param("# Adam: two memories.\n# more\noptimizer a() {}", "Adam: two memories.", id="first-comment"),
    pytest.param("\n\n#   padded  \n", "padded", id="leading-blank-lines"),
    pytest.param("optimizer a() {}\n# late", "", id="no-header"),
])
def test_description_is_the_first_header_comment(text, expected):
    assert description(text) == expected
