"""nldsl/render/dot.py: golden DOT for the paper's systems, determinism, options, clusters."""
from __future__ import annotations

import os
import pathlib
import re

import pytest

import nldsl
from nldsl.render.dot import to_dot

GOLDEN = pathlib.Path(__file__).parent / "golden" / "dot"
BLESS = os.environ.get("NLDSL_BLESS") == "1"
GOLDEN_SPECS = ["adam", "muon", "m3", "titans", "cms", "cms_nested", "cms_independent", "hope"]


@pytest.mark.parametrize("name", GOLDEN_SPECS)
def test_dot_matches_golden(name):
    """Re-bless after an intended change with `NLDSL_BLESS=1 pytest tests/test_render_dot.py`."""
    dot = nldsl.load(name).to_dot()
    path = GOLDEN / f"{name}.dot"
    if BLESS:
        path.write_text(dot)
    assert path.is_file(), f"no golden file {path}; run with NLDSL_BLESS=1 to create it"
    assert dot == path.read_text(), f"{name}: DOT differs from {path} (NLDSL_BLESS=1 re-blesses)"


@pytest.mark.parametrize("name", GOLDEN_SPECS)
def test_dot_is_deterministic(name):
    assert nldsl.load(name).to_dot() == nldsl.load(name).to_dot()


@pytest.mark.parametrize("name", GOLDEN_SPECS)
def test_one_cluster_per_level(name):
    spec = nldsl.load(name)
    clusters = re.findall(r"subgraph cluster_(\w+)", spec.to_dot())
    assert clusters == [c for c in clusters if c in spec.graph.levels]
    assert sorted(clusters) == sorted(spec.graph.levels)


@pytest.mark.parametrize("name, level, title", [
    ("titans", "memory", "every 1 token  ·  chunk 64 (chunk_size)  ·  heads 4  ·  backprop"),
    ("m3", "slow", "every 10 steps (f)"),
    ("cms", "slow", "every 256 tokens (period_slow)  ·  backprop"),
    ("adam", "moments", "every 1 step"),
])
def test_level_titles_name_the_frequency(name, level, title):
    assert f"<b>{level}</b>  ·  {title}>" in nldsl.load(name).to_dot()


def test_gradient_boundary_only_where_gradients_stop():
    """Adam's moments do not backprop into the weights: a red dashed border; Titans' memory does."""
    adam, titans = nldsl.load("adam").to_dot(), nldsl.load("titans").to_dot()
    moments = adam[adam.index("subgraph cluster_moments"):]
    assert 'style="rounded,filled,dashed"' in moments.splitlines()[1]
    assert "dashed" not in titans[titans.index("subgraph cluster_memory"):].splitlines()[1]


def test_same_level_states_side_by_side():
    """Adam's two moments (=_f, no dependency) share a rank inside their level."""
    dot = nldsl.load("adam").to_dot()
    assert re.search(r'rank=same\s+"moments\.m"\s+"moments\.v"', dot)


@pytest.mark.parametrize("direction", ["TB", "LR"])
def test_direction(direction):
    assert f"rankdir={direction}" in to_dot(nldsl.load("titans"), direction=direction)


def test_compact_leaves_the_outer_levels_init_and_backprop_edges_to_the_labels():
    """Titans' memory is learned from M_0 by, and backprops into, the pre-training level:
    compact says so in its text (`init learned by outer`, `backprop`); full draws the edges."""
    compact = to_dot(nldsl.load("titans"), detail="compact")
    full = to_dot(nldsl.load("titans"), detail="full")
    assert "init learned by outer" in compact and "backprop" in compact
    assert 'label="∇"' not in compact and "label=\"init M\"" not in compact
    assert 'label="∇"' in full and "label=\"init M\"" in full


def test_full_detail_keeps_every_branch_compact_folds_them():
    compact, full = (nldsl.load("adam").to_dot(detail=d) for d in ("compact", "full"))
    assert "amsgrad" in full and "if amsgrad" not in compact
    assert "shown at the defaults of amsgrad, decoupled_weight_decay, maximize" in compact
    assert "shown at the defaults" not in full


@pytest.mark.parametrize("bad", [{"detail": "huge"}, {"direction": "BT"}])
def test_bad_options_are_rejected(bad):
    with pytest.raises(ValueError, match="must be one of"):
        to_dot(nldsl.load("sgd"), **bad)


def test_legend_lists_only_drawn_kinds():
    adam = nldsl.load("adam").to_dot()
    legend = adam[adam.index("legend [label="):]
    assert "reads another level" in legend and "generates another level" in legend
    assert "initial state" not in legend and "shared gradient flow" not in legend
    assert "legend" not in nldsl.load("adam").graph.levels
    assert "legend [" not in to_dot(nldsl.load("adam"), legend=False)
