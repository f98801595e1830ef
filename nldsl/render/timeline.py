"""The frequency picture: for a window of steps or tokens, which levels write at each unit.

A level `every N` writes once per N units, at the end of each period (units N, 2N, ...), with
the sum of the period's updates; reads in between see the last written state. A `chunk C`
level writes every unit but takes its gradients at the chunk-start state: its chunk boundaries
are drawn as dotted lines (where they are not also its writes). A module's implicit outer level is written by the task optimizer once
per training step, after the whole sequence: one mark at the end of the window.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nldsl.language.consteval import hparam_values, try_evaluate
from nldsl.errors import NLDSLError
from nldsl.graph import LevelGraph
from nldsl.lower.timing import write_units
from nldsl.render import style
from nldsl.render.labels import frequency_parts

TIMELINE_FORMATS = ("png", "svg", "pdf")
MIN_WINDOW = 16
MAX_WINDOW = 4096
CELL_EDGES_UP_TO = 96  # draw each write as a cell while cells are wide enough to see
MAX_CHUNK_LINES = 64


@dataclass(frozen=True)
class Lane:
    """One level's row: the units (1-based) at which it writes, and its chunk size if any."""

    level: str
    label: str
    writes: tuple[int, ...]
    chunk: int | None
    index: int


def default_window(graph: LevelGraph) -> int:
    """Two of the longest period or chunk of any level (a chunk is a period of its gradient
    snapshots), at least 16 units."""
    env = hparam_values(graph.decl)
    spans = [1]
    for level in graph.levels.values():
        if not level.implicit:
            chunk = try_evaluate(level.chunk, env)
            spans += [level.period or 1, chunk if isinstance(chunk, int) else 1]
    return max(MIN_WINDOW, min(MAX_WINDOW, 2 * max(spans)))


def schedule(graph: LevelGraph, window: int) -> list[Lane]:
    """Each level's writes in units 1..window, slowest level first."""
    if not 1 <= window <= MAX_WINDOW:
        raise NLDSLError(f"the timeline window must be between 1 and {MAX_WINDOW} units, "
                         f"got {window}")
    env = hparam_values(graph.decl)
    lanes = []
    for index, level in enumerate(graph.levels.values()):
        if level.implicit and graph.kind == "module":
            writes, label = (window,), f"{level.name}\nonce per training step"
        elif level.period is None:
            writes, label = (), f"{level.name}\n{level.frequency_label()} (no default)"
        else:
            writes = tuple(write_units(level.period, window))
            label = f"{level.name}\n{', '.join(frequency_parts(graph, level))}"
        chunk = try_evaluate(level.chunk, env)
        lanes.append(Lane(level.name, label, writes, chunk if isinstance(chunk, int) else None,
                          index))
    return lanes


def _chunk_boundaries(lane: Lane, window: int) -> list[int]:
    """Where a chunked level's gradient snapshots change, when that differs from its writes
    and the lines stay far enough apart to be read."""
    if not lane.chunk or len(lane.writes) < 2:
        return []
    period = lane.writes[1] - lane.writes[0]
    if lane.chunk == period or window / lane.chunk > MAX_CHUNK_LINES:
        return []
    return list(range(lane.chunk, window, lane.chunk))


def _figure(graph: LevelGraph, lanes: list[Lane], window: int):
    try:
        from matplotlib.figure import Figure
    except ImportError as missing:
        raise NLDSLError("the timeline view needs matplotlib: `pip install nldsl[plot]`") from missing
    unit = "token" if graph.kind == "module" else "step"
    figure = Figure(figsize=(11, 1.2 + 0.62 * len(lanes)), layout="constrained")
    axes = figure.add_subplot()
    wide_cells = window <= CELL_EDGES_UP_TO
    for row, lane in enumerate(lanes):
        y = len(lanes) - 1 - row
        ink = style.level_ink(lane.index)
        axes.broken_barh([(0.5, window)], (y - 0.42, 0.84), facecolors=style.level_fill(lane.index))
        if wide_cells:
            axes.broken_barh([(t - 0.5, 1) for t in lane.writes], (y - 0.32, 0.64),
                             facecolors=ink, edgecolors="white", linewidth=0.8)
        else:  # a cell narrower than a pixel: a line of at least one pixel per write
            axes.vlines(lane.writes, y - 0.32, y + 0.32, colors=ink, linewidth=1)
        boundaries = _chunk_boundaries(lane, window)
        if boundaries:
            axes.vlines([b + 0.5 for b in boundaries], y - 0.42, y + 0.42, colors=style.INK,
                        linewidth=0.9, linestyles=":")
        count = len(lane.writes)
        axes.text(window + 0.5 + window * 0.01, y, f"{count} write{'s' if count != 1 else ''}",
                  va="center", fontsize=8, color=style.MUTED)
    axes.xaxis.get_major_locator().set_params(integer=True)
    axes.set_yticks(range(len(lanes)), [lane.label for lane in reversed(lanes)], fontsize=8)
    axes.set_xlim(0.5, window * 1.08 + 0.5)
    axes.set_ylim(-0.6, len(lanes) - 0.4)
    axes.set_xlabel(f"{unit} (1 .. {window}); a filled cell is a write of that level's state")
    axes.set_title(f"{graph.name}: which levels write at each {unit}", loc="left", fontsize=11)
    for side in ("top", "right", "left"):
        axes.spines[side].set_visible(False)
    axes.tick_params(axis="y", length=0)
    return figure


def write_timeline(spec, path: str | Path, window: int | None = None) -> Path:
    """Draw `spec`'s timeline over `window` units (default: `default_window`) to `path`."""
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in TIMELINE_FORMATS:
        raise NLDSLError(f"cannot write {path}: a timeline is drawn as "
                         f"{', '.join('.' + f for f in TIMELINE_FORMATS)}")
    graph = spec.graph
    window = window or default_window(graph)
    _figure(graph, schedule(graph, window), window).savefig(path, dpi=110)
    return path
