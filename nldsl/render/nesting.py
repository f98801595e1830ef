"""Which level's cluster holds which: the nesting tree of a diagram, slower outside faster.

The paper orders levels by frequency (Sec. 3.2): A is faster than B if it writes more often, or
at the same frequency if B needs A's state at the same step; if neither, A =_f B. Levels are
taken slowest first (`reversed(graph.update_order())`, so a same-frequency level comes before
the levels it needs) and each is drawn inside the nearest earlier level P that
- is strictly slower and feeds it (P's state or output conditions it or generates its
  context: a `reads`/`generates` transfer from P), or
- is as fast and needs its state in the same unit (Adam's weights need their moments);
otherwise inside the outermost level, when that is strictly slower, else at the top.

So a chain of levels feeding each other (sequential CMS) nests like Russian dolls; branches fed
only by the input sit side by side inside the outer level (independent CMS); a level whose
output flows *out* into slower ones (Hope's self-modifying Titans into its CMS chain) stays
beside them; same-frequency levels with no dependency (`=_f`) are siblings. `init` and
`backprop` transfers are drawn as edges but do not nest.
"""
from __future__ import annotations

import networkx as nx

from nldsl.graph import LevelGraph


def slow_to_fast(graph: LevelGraph) -> list[str]:
    """Every level, slowest first; at equal frequency, a level before the levels it needs."""
    return list(reversed(graph.update_order()))


def parents(graph: LevelGraph) -> dict[str, str | None]:
    """level -> the level whose cluster holds it (None for the outermost clusters)."""
    order = slow_to_fast(graph)
    feeds = {(e.source, e.target) for e in graph.transfers()
             if e.kind in ("reads", "generates") and e.source != e.target}
    result: dict[str, str | None] = {name: None for name in graph.levels}
    for index, name in enumerate(order):
        rank = graph.levels[name].rank
        holders = [p for p in order[:index]
                   if (graph.levels[p].rank > rank and (p, name) in feeds)
                   or (graph.levels[p].rank == rank and name in graph.depends_on(p))]
        if holders:
            result[name] = holders[-1]
        elif index > 0 and graph.levels[order[0]].rank > rank:
            result[name] = order[0]
    return result


def children(graph: LevelGraph) -> dict[str | None, list[str]]:
    """parent -> its child levels, upstream first: a sibling whose subtree feeds another's comes
    before it (Hope's Titans before its CMS chain), else declaration order. Key None holds the
    outermost levels."""
    up = parents(graph)
    tree: dict[str | None, list[str]] = {None: [], **{name: [] for name in graph.levels}}
    for name in graph.levels:
        tree[up[name]].append(name)

    def top(level: str, siblings: list[str]) -> str | None:
        while level not in siblings and up[level] is not None:
            level = up[level]
        return level if level in siblings else None

    for parent, siblings in tree.items():
        flow = nx.DiGraph()
        flow.add_nodes_from(siblings)
        for edge in graph.transfers():
            if edge.kind in ("reads", "generates"):
                a, b = top(edge.source, siblings), top(edge.target, siblings)
                if a is not None and b is not None and a != b:
                    flow.add_edge(a, b)
        if nx.is_directed_acyclic_graph(flow):
            position = {name: i for i, name in enumerate(siblings)}
            tree[parent] = list(nx.lexicographical_topological_sort(flow, key=position.get))
    return tree


def ancestors(graph: LevelGraph, level: str) -> list[str]:
    """`level`'s enclosing levels, innermost first."""
    up = parents(graph)
    found, current = [], up[level]
    while current is not None:
        found.append(current)
        current = up[current]
    return found


def depth(graph: LevelGraph, level: str) -> int:
    return len(ancestors(graph, level))
