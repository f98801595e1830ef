"""How a nesting diagram looks: fonts, level colours, and one edge style per kind of transfer.

Kept as data so the legend, the DOT builder and the timeline agree. The edge kinds are the
paper's knowledge transfers (Sec. 3.3): parametric conditioning (`reads`, eqs. 24-26),
generation of context (`generates`, e.g. the weights generating an optimizer's gradients),
meta-learned initial state (`init`, eq. 28) and a shared gradient flow (`backprop`).
"""
from __future__ import annotations

FONT = "DejaVu Sans"
MONO = "DejaVu Sans Mono"
TITLE_SIZE = 16
CLUSTER_SIZE = 12
BODY_SIZE = 10
EDGE_SIZE = 9

INK = "#333333"
MUTED = "#666666"
#: Colour of a gradient-flow boundary: a level that does not backprop into its parent.
STOP = "#c0392b"

#: Cluster fills, outermost first; a level's colour is fixed by its declaration index, so the
#: diagram and the timeline colour a level the same way.
LEVEL_FILLS = ("#f4f4f4", "#e3eefa", "#e6f4e4", "#fdf0dc", "#efe6f7", "#fbe4e4", "#e0f4f4")
LEVEL_INKS = ("#7f7f7f", "#3a6ea5", "#3d8b3d", "#c77c0e", "#7b4fa6", "#b03a3a", "#2a8a8a")

#: kind -> (DOT edge attributes, legend text). Order is the legend's order.
EDGE_STYLES: dict[str, tuple[dict[str, str], str]] = {
    "reads": ({"color": "#1f4e79", "fontcolor": "#1f4e79", "style": "solid", "penwidth": "1.4"},
              "reads another level's state or output (parametric conditioning)"),
    "generates": ({"color": "#2e7d32", "fontcolor": "#2e7d32", "style": "dashed",
                   "penwidth": "1.4"},
                  "generates another level's context (keys, values, gradients)"),
    "init": ({"color": "#7b1fa2", "fontcolor": "#7b1fa2", "style": "dotted", "penwidth": "2",
              "arrowhead": "empty"},
             "learns another level's initial state (init learned)"),
    "backprop": ({"color": STOP, "fontcolor": STOP, "style": "bold", "penwidth": "2.2",
                  "dir": "back", "arrowtail": "inv"},
                 "shared gradient flow: gradients of the inner level's writes reach the outer"),
}

#: The module's own context flow: the input tokens into the levels, level outputs into `out`.
FLOW_STYLE = ({"color": "#555555", "fontcolor": "#555555", "style": "solid", "penwidth": "1"},
              "context flow: the input tokens x in, level outputs into out")

FLOW_FILL = "#fff8dc"

#: How a legend row draws each edge kind in text (no edges can live inside a label).
LEGEND_STROKES = {"reads": "———▶", "generates": "– – ▶", "init": "·····▷", "backprop": "◀━━━",
                  "flow": "——▶"}

BOUNDARY_LEGEND = "red dashed border: gradients stop here (the level has its own gradient flow)"


def level_fill(index: int) -> str:
    return LEVEL_FILLS[index % len(LEVEL_FILLS)]


def level_ink(index: int) -> str:
    return LEVEL_INKS[index % len(LEVEL_INKS)]
