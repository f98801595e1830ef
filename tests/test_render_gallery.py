"""nldsl/render/gallery.py: docs/diagrams holds every stdlib spec's current diagram."""
from __future__ import annotations

import pathlib
import shutil

import pytest

import nldsl
from nldsl.library import stdlib_names
from nldsl.render.gallery import FOLDER, INDEX, STAMP, dot_hash, index_text, regenerate, stale, stamped_svg

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_gallery_is_up_to_date():
    assert stale(ROOT) == [], "run `python -m nldsl.render.gallery` and commit docs/diagrams"


def test_index_shows_every_spec():
    text = (ROOT / INDEX).read_text()
    for name in stdlib_names():
        assert f"![{name}](diagrams/{name}.svg)" in text


def test_stamp_is_the_hash_of_the_dot_text():
    dot = nldsl.load("sgd").to_dot()
    svg = stamped_svg(dot)
    assert svg.startswith("<?xml")
    assert STAMP.search(svg).group(1) == dot_hash(dot)


@pytest.fixture
def copy(tmp_path):
    (tmp_path / "docs").mkdir()
    shutil.copytree(ROOT / FOLDER, tmp_path / FOLDER)
    shutil.copy(ROOT / INDEX, tmp_path / INDEX)
    return tmp_path


def test_a_changed_diagram_is_found_and_regenerated(copy):
    regenerate(copy)  # independent of whether the committed gallery is current
    path = copy / FOLDER / "adam.svg"
    path.write_text(path.read_text().replace(dot_hash(nldsl.load("adam").to_dot()), "0" * 64))
    (copy / FOLDER / "removed_spec.svg").write_text("<svg/>")
    (copy / INDEX).write_text("stale")
    expected = [str(FOLDER / "adam.svg"), str(INDEX), str(FOLDER / "removed_spec.svg")]
    assert stale(copy) == expected
    assert regenerate(copy) == expected
    assert stale(copy) == []
    assert (copy / INDEX).read_text() == index_text(stdlib_names())
