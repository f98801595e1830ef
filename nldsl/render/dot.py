"""A spec's nesting diagram as DOT text: `to_dot(spec)`, a pure function of the level graph.

Each level is a cluster titled with its name and frequency, nested slower outside faster
(`nldsl.render.nesting`); inside it sit its boxes (`nldsl.render.labels`). Knowledge transfers
between levels are edges styled by kind (`nldsl.render.style`), with a legend. A level that does
not `backprop` into the level around it has its own gradient flow (the paper's "box of
gradient flow", Sec. 3.2): its border is drawn red and dashed, where gradients stop.

The output is deterministic: everything is emitted in declaration order.
"""
from __future__ import annotations

from typing import Literal

import graphviz

from nldsl.graph import LevelGraph
from nldsl.library import description
from nldsl.render import style
from nldsl.render.edges import Diagram
from nldsl.render.labels import Box, Row
from nldsl.render.text import html

Detail = Literal["compact", "full"]
Direction = Literal["TB", "LR"]
DETAILS = ("compact", "full")
DIRECTIONS = ("TB", "LR")
STATES_PER_ROW = 3


def _row_html(row: Row) -> str:
    text = html(row.text)
    indent = len(text) - len(text.lstrip(" "))
    text = "&#160;" * indent + text[indent:]
    if row.bold:
        text = f"<b>{html(row.bold)}</b>{text}"
    if row.tone == "muted":
        text = f'<font color="{style.MUTED}">{text}</font>'
    return f'<tr><td align="left">{text}</td></tr>'


def box_label(box: Box) -> str:
    rows = "".join(_row_html(row) for row in box.rows)
    return f'<<table border="0" cellborder="0" cellspacing="0" cellpadding="1">{rows}</table>>'


def _draw_level(diagram: Diagram, parent: graphviz.Digraph, name: str) -> None:
    """A level's cluster: title, context box above a row of state boxes, then its children."""
    level = diagram.graph.levels[name]
    index = diagram.index[name]
    stops = diagram.stops_gradient(name)
    with parent.subgraph(name=f"cluster_{name}") as cluster:
        cluster.attr(label="", style="rounded,filled,dashed" if stops else "rounded,filled",
                     fillcolor=style.level_fill(index),
                     color=style.STOP if stops else style.level_ink(index),
                     penwidth="2" if stops else "1.2", margin="12")
        # The title is a node, not the cluster's label: dot keeps edges off nodes and sizes the
        # cluster to hold them, so no edge crosses a title and no title runs off its border.
        title = f"{name}.title"
        cluster.node(title, diagram.title(name), shape="plaintext", style="",
                     fontname=style.FONT, fontsize=str(style.CLUSTER_SIZE), margin="0")
        boxes = diagram.boxes[name]
        for box in boxes:
            cluster.node(box.id, box_label(box), **_box_attrs(box))
        for box in boxes[:1]:
            cluster.edge(title, box.id, style="invis")
        upper = [b for b in boxes if b.kind in ("context", "input")]
        lower = [b for b in boxes if b.kind in ("state", "params")]
        rows = [lower[i:i + STATES_PER_ROW] for i in range(0, len(lower), STATES_PER_ROW)]
        for row in rows:
            if len(row) > 1:
                with cluster.subgraph() as same:
                    same.attr(rank="same")
                    for box in row:
                        same.node(box.id)
        for above, below in zip([upper] + rows, rows):
            for top in above[:1] if level.implicit else above:
                for box in below:
                    cluster.edge(top.id, box.id, style="invis")
        for child in diagram.tree[name]:
            _draw_level(diagram, cluster, child)
            cluster.edge(diagram.anchor(name), diagram.top(child), style="invis", weight="4")


def _box_attrs(box: Box) -> dict[str, str]:
    """The module's input and output stand out from the states."""
    return {"fillcolor": style.FLOW_FILL} if box.kind in ("input", "output") else {}


def _legend(diagram: Diagram) -> str | None:
    entries = [(kind, *reversed(style.EDGE_STYLES[kind])) for kind in diagram.kinds_drawn()]
    if diagram.flows():
        entries.append(("flow", style.FLOW_STYLE[1], style.FLOW_STYLE[0]))
    rows = []
    for kind, text, attrs in entries:
        stroke = f'<font color="{attrs["color"]}">{html(style.LEGEND_STROKES[kind])}</font>'
        rows.append(f'<tr><td align="left">{stroke}</td><td align="left">{html(text)}</td></tr>')
    if any(diagram.stops_gradient(name) for name in diagram.graph.levels):
        stroke = f'<font color="{style.STOP}">┅┅┅</font>'
        rows.append(f'<tr><td align="left">{stroke}</td>'
                    f'<td align="left">{html(style.BOUNDARY_LEGEND)}</td></tr>')
    if not rows:
        return None
    return (f'<<table border="0" cellborder="0" cellspacing="2" cellpadding="1">'
            f'<tr><td align="left" colspan="2"><b>legend</b></td></tr>{"".join(rows)}</table>>')


def _title(graph: LevelGraph, text: str, fixed: set[str]) -> str:
    """`adam (optimizer) — description`, and which options a compact diagram fixed."""
    about = description(text)
    title = f"<b>{html(graph.name)}</b>  ({graph.kind})" + (f"  —  {html(about)}" if about else "")
    if fixed:
        options = ", ".join(sorted(fixed))
        note = f"shown at the defaults of {options} (--detail full shows every branch)"
        title += f'<br align="left"/><font point-size="10" color="{style.MUTED}">{html(note)}</font>'
    return f"<{title}<br align=\"left\"/>>"


def to_dot(spec, detail: Detail = "compact", direction: Direction = "TB", legend: bool = True) -> str:
    """The DOT text of `spec`'s nesting diagram (`detail`: compact | full; `direction`: TB | LR)."""
    if detail not in DETAILS:
        raise ValueError(f"detail must be one of {DETAILS}, not {detail!r}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    graph = spec.graph
    diagram = Diagram(graph, full=detail == "full")
    dot = graphviz.Digraph(name=graph.name)
    dot.attr(rankdir=direction, compound="true", label=_title(graph, spec.text, diagram.labeller.fixed), labelloc="t",
             labeljust="l", fontname=style.FONT, fontsize=str(style.TITLE_SIZE),
             nodesep="0.3", ranksep="0.3", pad="0.2")
    dot.attr("node", shape="box", style="rounded,filled", fillcolor="white", color=style.INK,
             fontname=style.MONO, fontsize=str(style.BODY_SIZE), margin="0.12,0.06")
    dot.attr("edge", fontname=style.FONT, fontsize=str(style.EDGE_SIZE), arrowsize="0.7")
    for name in diagram.tree[None]:
        _draw_level(diagram, dot, name)
    for tail, head, attrs in diagram.edges():
        dot.edge(tail, head, **attrs)
    key = _legend(diagram) if legend else None
    if key is not None:
        dot.node("legend", key, shape="plain", fontname=style.FONT, fontsize="9")
    return dot.source
