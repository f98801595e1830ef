"""Which level's cluster holds which: the nesting tree of a diagram, slower outside faster.

The paper orders levels by frequency (Sec. 3.2): A is faster than B if it writes more often, or
at the same frequency if B needs A's state at the same step; if neither, A =_f B. A diagram
draws each level inside a slower one it exchanges data with:

    parent(L) = the nearest level declared before L (levels are declared slow to fast) that
                reads from L or feeds L's context (a `reads`/`generates` transfer, either way)
                and is either strictly slower than L, or as fast and needs L's state;
                otherwise the outermost level, when it is strictly slower than L.

So a chain of levels feeding each other (sequential CMS, Adam's weights reading its moments)
nests like Russian dolls, while branches that only talk to the outer level (independent CMS)
sit side by side inside it, and same-frequency levels with no dependency (`=_f`) are siblings.
`init` and `backprop` transfers are drawn as edges but do not nest: they link levels that need
not exchange data (independent CMS still backprops into the outer level).
"""
from __future__ import annotations

from nldsl.graph import LevelGraph


def _data_links(graph: LevelGraph) -> set[frozenset[str]]:
    return {frozenset((e.source, e.target)) for e in graph.transfers()
            if e.kind in ("reads", "generates") and e.source != e.target}


def parents(graph: LevelGraph) -> dict[str, str | None]:
    """level -> the level whose cluster holds it (None for the outermost clusters)."""
    names = list(graph.levels)
    links = _data_links(graph)
    result: dict[str, str | None] = {}
    for index, name in enumerate(names):
        rank = graph.levels[name].rank
        encloses = [p for p in names[:index]
                    if frozenset((p, name)) in links
                    and (graph.levels[p].rank > rank or name in graph.depends_on(p))]
        if encloses:
            result[name] = encloses[-1]
        elif index > 0 and graph.levels[names[0]].rank > rank:
            result[name] = names[0]
        else:
            result[name] = None
    return result


def children(graph: LevelGraph) -> dict[str | None, list[str]]:
    """parent -> its child levels in declaration order; key None holds the outermost ones."""
    tree: dict[str | None, list[str]] = {None: []}
    for name in graph.levels:
        tree.setdefault(name, [])
    for name, parent in parents(graph).items():
        tree[parent].append(name)
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
