"""nldsl/render/timeline.py: which levels write at each unit (the paper's frequency picture)."""
from __future__ import annotations

import pytest

import nldsl
from nldsl.render.timeline import MAX_WINDOW, _chunk_boundaries, default_window, schedule, write_timeline


def lanes(name: str, window: int) -> dict:
    return {lane.level: lane for lane in schedule(nldsl.load(name).graph, window)}


def test_every_n_writes_at_the_end_of_each_period():
    cms = lanes("cms", 512)  # periods 256, 64, 16 by default
    assert cms["slow"].writes == (256, 512)
    assert cms["mid"].writes == tuple(range(64, 513, 64))
    assert len(cms["fast"].writes) == 512 // 16


def test_a_modules_outer_level_writes_once_per_training_step():
    assert lanes("titans", 128)["outer"].writes == (128,)


def test_optimizer_levels_count_steps():
    m3 = lanes("m3", 30)  # the slow momentum every f = 10 steps
    assert m3["slow"].writes == (10, 20, 30)
    assert m3["weights"].writes == tuple(range(1, 31))


def test_chunks_are_drawn_where_they_differ_from_the_writes():
    titans = lanes("titans", 256)
    assert titans["memory"].chunk == 64
    assert _chunk_boundaries(titans["memory"], 256) == [64, 128, 192]
    cms = lanes("hope", 512)
    assert _chunk_boundaries(cms["cms_slow"], 512) == []


def test_lanes_are_slowest_first():
    assert [lane.level for lane in schedule(nldsl.load("cms").graph, 16)] == [
        "outer", "slow", "mid", "fast"]


@pytest.mark.parametrize("name, window", [("adam", 16), ("titans", 128), ("cms", 512),
                                          ("hope", 512)])
def test_default_window_shows_two_of_the_longest_period_or_chunk(name, window):
    assert default_window(nldsl.load(name).graph) == window


@pytest.mark.parametrize("window", [0, MAX_WINDOW + 1])
def test_bad_window(window):
    with pytest.raises(nldsl.NLDSLError, match="window must be between"):
        schedule(nldsl.load("adam").graph, window)


@pytest.mark.parametrize("suffix, magic", [("png", b"\x89PNG"), ("svg", b"<?xml"),
                                           ("pdf", b"%PDF")])
def test_write_timeline(tmp_path, suffix, magic):
    path = write_timeline(nldsl.load("hope"), tmp_path / f"t.{suffix}", window=64)
    assert path.read_bytes().startswith(magic)


def test_timeline_rejects_dot(tmp_path):
    with pytest.raises(nldsl.NLDSLError, match="a timeline is drawn as .png"):
        write_timeline(nldsl.load("adam"), tmp_path / "t.dot")
