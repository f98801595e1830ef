"""The edges of a nesting diagram: which boxes each knowledge transfer joins, and how it looks.

A transfer `(source level, target level, kind, via names)` is drawn from the box in the source
level that defines a carried name to the box in the target level that uses it (for `init`, to
the state whose initial value is learned; for `backprop`, between the levels' main boxes). When
one box feeds three or more boxes of another level, one edge ends at that level's cluster.
Edges that point from an inner level to an outer one do not push the layout (`constraint`),
so clusters stay nested top to bottom. A module's own context flow adds edges from the input
`x` to the boxes that use it, and from level outputs to `out`.
"""
from __future__ import annotations

from nldsl.graph import Edge, LevelGraph
from nldsl.render import style
from nldsl.render.labels import OUT, Labeller, frequency_parts
from nldsl.render.nesting import ancestors, children
from nldsl.render.text import greek, html

MAX_EDGE_NAMES = 3
MERGE_AT = 3
PRE_TRAINING = "pre-training: the task loss, once per training step"


def _bool(value: bool) -> str:
    return "true" if value else "false"


class Diagram:
    """One spec's boxes, nesting tree and edges, ready to be written as DOT."""

    def __init__(self, graph: LevelGraph, full: bool):
        self.graph = graph
        self.full = full
        self.tree = children(graph)
        self.index = {name: i for i, name in enumerate(graph.levels)}
        self.labeller = Labeller(graph, full)
        self.boxes = {name: self.labeller.level_boxes(level) for name, level in graph.levels.items()}

    # ------------------------------------------------------------ levels

    def anchor(self, level: str) -> str:
        """The node that stands for a level: its first state (or parameters) box."""
        boxes = self.boxes[level]
        states = [b for b in boxes if b.kind in ("state", "params")]
        return (states or boxes)[0].id

    def top(self, level: str) -> str:
        """The first node of a level's cluster: its title."""
        return f"{level}.title"

    def parent(self, level: str) -> str | None:
        found = ancestors(self.graph, level)
        return found[0] if found else None

    def is_inside(self, level: str, outer: str) -> bool:
        return level == outer or outer in ancestors(self.graph, level)

    def stops_gradient(self, level: str) -> bool:
        """Gradients stop at a nested level unless it is `backprop` (its own gradient flow)."""
        info = self.graph.levels[level]
        return not info.backprop and not info.implicit and self.parent(level) is not None

    def title(self, level: str) -> str:
        """`memory · every 1 token · chunk 64 · heads 4 · backprop`, as an HTML label."""
        info = self.graph.levels[level]
        about = PRE_TRAINING if info.implicit else "  ·  ".join(frequency_parts(self.graph, info))
        return f"<<b>{html(level)}</b>  ·  {html(about)}>"

    # ------------------------------------------------------------ edges

    def _pairs(self, edge: Edge) -> tuple[list[tuple[str, str, list[str]]], bool]:
        """(tail box, head box, names carried) for one transfer, one per pair of boxes; and
        whether they were merged into one edge that ends at the target level's cluster."""
        if edge.kind == "backprop":
            return [(self.anchor(edge.source), self.anchor(edge.target), [])], False
        pairs: dict[tuple[str, str], list[str]] = {}
        wanted = "defines" if edge.kind == "init" else "uses"
        for via in edge.via:
            tails = [b.id for b in self.boxes[edge.source] if via in b.defines]
            heads = [b.id for b in self.boxes[edge.target] if via in getattr(b, wanted)]
            for tail in tails or [self.anchor(edge.source)]:
                for head in heads or [self.anchor(edge.target)]:
                    pairs.setdefault((tail, head), []).append(via)
        found = [(tail, head, names) for (tail, head), names in pairs.items()]
        fans_out = len(found) >= MERGE_AT and len({tail for tail, _, _ in found}) == 1
        if fans_out and not self.is_inside(edge.source, edge.target):
            names = list(dict.fromkeys(n for _, _, carried in found for n in carried))
            return [(found[0][0], found[0][1], names)], True
        return found, False

    def label(self, kind: str, names: list[str]) -> str:
        if kind == "backprop":
            return "∇"
        shown = [greek(n) for n in names]
        if not self.full and len(shown) > MAX_EDGE_NAMES:
            shown = shown[:MAX_EDGE_NAMES] + [f"+{len(names) - MAX_EDGE_NAMES}"]
        lines = [", ".join(shown[i:i + MAX_EDGE_NAMES])
                 for i in range(0, len(shown), MAX_EDGE_NAMES)]
        return ("init " if kind == "init" else "") + ",\n".join(lines)

    def shown(self, edge: Edge) -> bool:
        """Compact diagrams leave out the pre-training level's `init` and `backprop` edges: the
        state boxes say `init learned by outer` and the level titles say `backprop`."""
        implicit = self.graph.levels[edge.source].implicit
        return self.full or not (implicit and edge.kind in ("init", "backprop"))

    def transfer_edges(self) -> list[tuple[str, str, dict[str, str]]]:
        drawn = []
        for edge in filter(self.shown, self.graph.transfers()):
            attrs, _ = style.EDGE_STYLES[edge.kind]
            downward = edge.target != edge.source and self.is_inside(edge.target, edge.source)
            pairs, merged = self._pairs(edge)
            for tail, head, names in pairs:
                extra = {"lhead": f"cluster_{edge.target}"} if merged else {}
                drawn.append((tail, head, {"label": self.label(edge.kind, names),
                                           "constraint": _bool(downward or head == OUT),
                                           **attrs, **extra}))
        return drawn

    def flows(self) -> list[tuple[str, str, dict[str, str]]]:
        """The module's context flow: `x` into the boxes that use it, outputs into `out`."""
        if self.graph.kind != "module":
            return []
        attrs = style.FLOW_STYLE[0]
        boxes = [b for level in self.boxes.values() for b in level]
        drawn = [("x", b.id, dict(attrs)) for b in boxes if b.id != "x" and "x" in b.uses]
        out = next((b for b in boxes if b.kind == "output"), None)
        if out is not None:
            carried = {v for e in self.graph.transfers() if e.target == out.level for v in e.via}
            for box in boxes:
                if box.level == out.level:
                    continue
                names = sorted((box.defines & out.uses) - carried)
                if names:
                    drawn.append((box.id, out.id, {"label": self.label("reads", names), **attrs}))
        return drawn

    def kinds_drawn(self) -> list[str]:
        """The transfer kinds that have at least one edge in this diagram, in legend order."""
        drawn = {e.kind for e in self.graph.transfers() if self.shown(e)}
        return [kind for kind in style.EDGE_STYLES if kind in drawn]

    def edges(self) -> list[tuple[str, str, dict[str, str]]]:
        return self.transfer_edges() + self.flows()
