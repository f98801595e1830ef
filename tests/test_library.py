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
    pytest.param("x" * 5000, "no standard-library spec named 'xxx", id="name-longer-than-a-path"),
    pytest.param("a/" * 3000, "no spec file at 'a/a/", id="path-longer-than-a-path"),
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


# ---------------------------------------------------------------- what a string is (issue 8 §6)

def test_an_existing_file_is_read_whatever_its_name_looks_like(tmp_path, monkeypatch):
    """`weird{1}.nl` has a `{` and `sgd` is a stdlib name: both are files when they exist."""
    monkeypatch.chdir(tmp_path)
    for name in ("weird{1}.nl", "sgd"):
        (tmp_path / name).write_text(f"# {name}\n" + stdlib_text("adam"))
        assert resolve(name) == (f"# {name}\n" + stdlib_text("adam"), name)


def test_a_path_object_is_a_path(tmp_path):
    path = tmp_path / "mine.nl"
    path.write_text(stdlib_text("sgd"))
    assert resolve(path) == (stdlib_text("sgd"), str(path))
    with pytest.raises(NLDSLError, match="no spec file at"):
        resolve(tmp_path / "adam")        # a Path is never a stdlib name


@pytest.mark.parametrize("text", [
    pytest.param("optimizer o(lr = 0.1)", id="one-line-without-brace"),
    pytest.param("# only a comment", id="comment-only"),
    pytest.param("", id="empty"),
    pytest.param(" adam", id="name-with-space"),
    pytest.param("optimizer " * 600, id="longer-than-a-path"),
    pytest.param("a\x00b", id="nul-byte"),
])
def test_text_that_is_no_name_nor_path_is_spec_text(text):
    assert resolve(text) == (text, "<string>")


@pytest.mark.parametrize("make", [
    pytest.param(lambda tmp: str(tmp), id="absolute"),
    pytest.param(lambda tmp: tmp, id="path-object"),
    pytest.param(lambda tmp: ".", id="dot"),
    pytest.param(lambda tmp: "folder", id="name-shaped"),
])
def test_a_directory_is_an_error_of_its_own(tmp_path, monkeypatch, make):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    with pytest.raises(NLDSLError, match="is a directory, not a spec file") as caught:
        resolve(make(tmp_path))
    assert "no standard-library spec" not in str(caught.value)


def test_a_stdlib_name_wins_over_a_directory_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "adam").mkdir()
    assert resolve("adam") == (stdlib_text("adam"), "adam.nl")


def test_a_one_line_spec_is_a_located_syntax_error_not_a_name():
    from nldsl.spec import load
    from nldsl.errors import NLDSLSyntaxError

    with pytest.raises(NLDSLSyntaxError) as caught:
        load("optimizer o(lr = 0.1)")
    assert str(caught.value).startswith("<string>:1:22: error: unexpected end of the text")
    assert "expected: `{`" in str(caught.value)
