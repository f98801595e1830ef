"""nldsl/render/images.py and `nldsl render`: every stdlib spec drawn as SVG and PNG, one
cluster per level; a clear message without the `dot` program."""
from __future__ import annotations

import re

import graphviz
import pytest

import nldsl
from nldsl.cli import main
from nldsl.library import stdlib_names, stdlib_text
from nldsl.render import images
from nldsl.render.images import dot_to_image, format_of, write_diagram

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """Every stdlib spec through the CLI as .svg and .png: name -> (exit codes, svg, png)."""
    folder = tmp_path_factory.mktemp("diagrams")
    results = {}
    for name in stdlib_names():
        svg, png = folder / f"{name}.svg", folder / f"{name}.png"
        codes = (main(["render", name, "-o", str(svg)]), main(["render", name, "-o", str(png)]))
        results[name] = (codes, svg, png)
    return results


@pytest.mark.parametrize("name", stdlib_names())
def test_render_svg_and_png(rendered, name):
    codes, svg, png = rendered[name]
    assert codes == (0, 0)
    assert png.read_bytes().startswith(PNG_MAGIC)
    text = svg.read_text()
    levels = nldsl.load(name).graph.levels
    assert len(re.findall(r'<g id="clust', text)) == len(levels)
    for level in levels:
        assert f"<title>cluster_{level}</title>" in text


def test_dot_output_needs_no_dot_program(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    path = nldsl.render("adam", tmp_path / "adam.dot")
    assert path.read_text() == nldsl.load("adam").to_dot()


@pytest.mark.parametrize("suffix", ["svg", "png", "pdf"])
def test_images_without_dot_say_how_to_install_it(tmp_path, monkeypatch, suffix):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(nldsl.NLDSLError) as caught:
        nldsl.render("adam", tmp_path / f"adam.{suffix}")
    message = str(caught.value)
    assert "`dot` program" in message and "apt-get install graphviz" in message
    assert f"adam.{suffix}" in message and "-o diagram.dot" in message
    assert not (tmp_path / f"adam.{suffix}").exists()


def test_cli_reports_missing_dot_without_traceback(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["render", "adam", "-o", str(tmp_path / "a.png")]) == 1
    err = capsys.readouterr().err
    assert "apt-get install graphviz" in err and "Traceback" not in err


@pytest.mark.parametrize("path", ["x.jpg", "x", "x.SVGZ"])
def test_unknown_format(path):
    with pytest.raises(nldsl.NLDSLError, match=r"unknown diagram format .* use one of \.dot, "):
        format_of(path)


def test_format_is_case_insensitive():
    assert format_of("A.SVG") == "svg"


def test_dot_failure_is_an_nldsl_error():
    with pytest.raises(nldsl.NLDSLError, match="the `dot` program failed"):
        dot_to_image("digraph { a -> }", "svg")


def test_write_diagram_writes_pdf(tmp_path):
    path = write_diagram(nldsl.load("sgd").to_dot(), tmp_path / "sgd.pdf")
    assert path.read_bytes().startswith(b"%PDF")


def test_missing_executable_is_mapped(monkeypatch):
    """The mapping does not depend on PATH lookups: graphviz's own exception is translated."""
    def missing(*args, **kwargs):
        raise graphviz.ExecutableNotFound(["dot"])

    monkeypatch.setattr(images.graphviz.Source, "pipe", missing)
    with pytest.raises(nldsl.NLDSLError, match="needs Graphviz's `dot` program"):
        dot_to_image("digraph {}", "png")


@pytest.mark.parametrize("argv, expected", [
    (["--detail", "full"], 'label="∇"'),
    (["--direction", "LR"], "rankdir=LR"),
])
def test_cli_options(tmp_path, argv, expected):
    out = tmp_path / "titans.dot"
    assert main(["render", "titans", "-o", str(out), *argv]) == 0
    assert expected in out.read_text()


def test_cli_timeline(tmp_path, capsys):
    out = tmp_path / "t.png"
    assert main(["render", "cms", "--timeline", "--window", "64", "-o", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert f"wrote {out}" in capsys.readouterr().out


def test_render_takes_a_path(tmp_path):
    """A `pathlib.Path` is a spec file, as it is for `nldsl.load`."""
    source = tmp_path / "sgd.nl"
    source.write_text(stdlib_text("sgd"))
    out = nldsl.render(source, tmp_path / "sgd.dot")
    assert out.read_text() == nldsl.load("sgd").to_dot()
