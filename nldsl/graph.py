"""The level graph: typed level objects plus a networkx topology of knowledge transfer.

Nodes are level names (strings); the typed `LevelInfo` objects live in a dict beside the graph,
never in networkx attribute dicts. Edges run from the level that provides to the level that
uses, one per (source, target, kind):

- `reads`     the target reads the source's state or output (parametric conditioning, eq. 24)
- `generates` the source generates the target's context: its keys, values, gates or gradients
              (knowledge transfer by generation; `grad(W)` is the weights generating gradients)
- `init`      the source meta-learns the target's initial state (`init learned`, eq. 28)
- `backprop`  the target's writes sit in the source's gradient flow (`backprop`, shared flow)
"""
from __future__ import annotations

from typing import Literal

import networkx as nx
from pydantic import BaseModel, ConfigDict

from nldsl.language import ast

EdgeKind = Literal["reads", "generates", "init", "backprop"]
EDGE_KINDS: tuple[EdgeKind, ...] = ("reads", "generates", "init", "backprop")
OUTER = "outer"


class StateInfo(BaseModel):
    """A state (memory) of a level: the parameters that level learns."""

    model_config = ConfigDict(frozen=True)
    name: str
    level: str
    decl: ast.State
    learned_by: str | None = None  # the level that meta-learns its initial value
    implicit: bool = False          # the optimizer's parameter `W`


class LevelInfo(BaseModel):
    """One level: its frequency, states, context, objectives, explicit updates and reads."""

    model_config = ConfigDict(frozen=True)
    name: str
    every: ast.Expr
    unit: Literal["step", "token"]
    period: int | None            # `every` evaluated with the hyper-parameters' defaults
    chunk: ast.Expr | None = None
    heads: ast.Expr | None = None
    backprop: bool = False
    partial: Literal["flush", "drop"] = "flush"
    once: bool = False            # one rule step per period, from the period's summed gradients
    implicit: bool = False        # the outer level of a module, not written in the spec
    states: dict[str, StateInfo] = {}
    contexts: dict[str, ast.Context] = {}
    objectives: list[ast.Objective] = []
    updates: list[ast.Update] = []
    reads: dict[str, ast.Read] = {}
    decl: ast.Level | None = None

    @property
    def rank(self) -> tuple[int, int]:
        """Sort key, larger is slower: any `step` level is slower than every `token` level."""
        return (1 if self.unit == "step" else 0, self.period if self.period is not None else 0)

    def frequency_label(self) -> str:
        from nldsl.language.printer import format_expr

        unit = self.unit + ("s" if self.period != 1 else "")
        text = f"every {format_expr(self.every)} {unit}"
        if self.chunk is not None:
            text += f", chunk {format_expr(self.chunk)}"
        if self.once:
            text += ", once"
        return text


class Edge(BaseModel):
    model_config = ConfigDict(frozen=True)
    source: str
    target: str
    kind: EdgeKind
    via: tuple[str, ...]          # the names that carry it
    span: ast.Span = ast.NO_SPAN


class LevelGraph:
    """A spec's levels and how they transfer knowledge, with the queries back ends need."""

    def __init__(self, decl: ast.SpecDecl, levels: dict[str, LevelInfo], edges: list[Edge],
                 output: ast.Expr | None, depends: dict[str, set[str]]):
        self.decl = decl
        self.levels = levels
        self.output = output
        self._depends = depends  # level -> levels whose write it needs in the same unit
        self.graph = nx.MultiDiGraph()
        self.graph.add_nodes_from(levels)
        for edge in edges:
            self.graph.add_edge(edge.source, edge.target, key=edge.kind)
        self._edges = edges

    @property
    def kind(self) -> str:
        return self.decl.kind

    @property
    def name(self) -> str:
        return self.decl.name

    @property
    def hparams(self) -> dict[str, ast.HParam]:
        return {h.name: h for h in self.decl.hparams}

    def state(self, name: str) -> StateInfo:
        for level in self.levels.values():
            if name in level.states:
                return level.states[name]
        raise KeyError(name)

    def states(self) -> list[StateInfo]:
        return [s for level in self.levels.values() for s in level.states.values()]

    def owner(self, name: str) -> str | None:
        """The level that defines `name` (a state, context or read), or None."""
        for level in self.levels.values():
            if name in level.states or name in level.contexts or name in level.reads:
                return level.name
        return None

    def transfers(self, kind: EdgeKind | None = None) -> list[Edge]:
        return [e for e in self._edges if kind is None or e.kind == kind]

    def readers_of(self, state: str) -> list[str]:
        """Levels other than the owner whose expressions use `state`."""
        return sorted({e.target for e in self._edges
                       if e.kind in ("reads", "generates") and state in e.via})

    def depends_on(self, level: str) -> set[str]:
        """Levels whose write `level` needs earlier in the same unit."""
        return set(self._depends.get(level, ()))

    def levels_by_frequency(self) -> list[list[str]]:
        """Groups of levels with the same frequency, slowest first."""
        groups: dict[tuple[int, int], list[str]] = {}
        for level in self.levels.values():
            groups.setdefault(level.rank, []).append(level.name)
        return [groups[rank] for rank in sorted(groups, reverse=True)]

    def update_order(self) -> list[str]:
        """The order of writes within one unit: faster levels first, then dependencies first;
        ties keep the declaration's slow-to-fast order reversed (inner levels first)."""
        declared = list(self.levels)
        order: list[str] = []
        for group in reversed(self.levels_by_frequency()):
            deps = nx.DiGraph()
            deps.add_nodes_from(group)
            deps.add_edges_from((d, n) for n in group for d in self._depends.get(n, ()) if d in group)
            key = {name: -declared.index(name) for name in group}
            order += list(nx.lexicographical_topological_sort(deps, key=key.get))
        return order

    def __repr__(self) -> str:
        return f"LevelGraph({self.kind} {self.name}: {', '.join(self.levels)})"
