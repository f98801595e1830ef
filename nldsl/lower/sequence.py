"""Attention call sites: one key-value cache per call, named after its definition. Torch-free.

`attention(q, k, v)`, `window_attention(q, k, v, width)` and `segment_attention(q, k, v, size)`
mix tokens: token t's output depends on the keys and values of earlier tokens, which the module
state keeps between calls (docs/modules.md, "The state"). Each call site owns one cache, named
like a conv kernel after the definition it sits in: `read o = attention(...)` owns
`o_attention` (a second call in one definition `o_attention2`). What the lowering checks, each a
located error: the width or size is a positive integer; keys and values are one stream each or
tuples of the same length; `prefix` is a pair of the outer level's matrices (P_k, P_v) with one
row per persistent token; the call sits in a context, a read or `out` (a loss or an explicit
update differentiates at a snapshot, which a cache that grows token by token does not have).
"""
from __future__ import annotations

from nldsl.language import ast
from nldsl.language.consteval import calls_in
from nldsl.errors import NLDSLCompileError, Problem
from nldsl.graph import OUTER
from nldsl.lower.program import AttentionSite

#: The built-ins with a key-value cache (shape class "attention"), and their kind.
KINDS = {"attention": "full", "window_attention": "window", "segment_attention": "segment"}


def attention_sites(spec, const, params: dict) -> dict[tuple[int, int], AttentionSite]:
    """(line, col) of each attention call -> its AttentionSite; every misuse reported at once."""
    graph = spec.graph
    problems: list[Problem] = []
    report = lambda node, message, expected, hint: problems.append(Problem(
        message, node.span.line, node.span.col, node.span.end_line or None,
        node.span.end_col or None, expected, hint, spec.source))
    definitions = []
    for level in graph.levels.values():
        definitions += [(c.name, c.value) for c in level.contexts.values()]
        definitions += [(r.name, r.value) for r in level.reads.values()]
        for objective in level.objectives:
            _refuse(objective.loss, "a `minimize` loss", report)
        for update in level.updates:
            _refuse(update.value, "an explicit update", report)
    if graph.output is not None:
        definitions.append(("out", graph.output))
    sites = {}
    for owner, value in definitions:
        calls = sorted((c for c in calls_in(value) if c.func in KINDS),
                       key=lambda c: (c.span.line, c.span.col))
        for index, call in enumerate(calls):
            name = f"{owner}_attention" + (str(index + 1) if index else "")
            site = _site(call, name, const, graph, params, report)
            if site is not None:
                sites[(call.span.line, call.span.col)] = site
    if problems:
        raise NLDSLCompileError(problems)
    return sites


def _refuse(expr, where: str, report) -> None:
    for call in calls_in(expr):
        if call.func in KINDS:
            report(call, f"`{call.func}` in {where}: its key-value cache grows token by token, "
                   "and a loss or update is evaluated at a snapshot of the states",
                   "attention in a context, a read or `out`", "compute the attention in a "
                   "context (`let a = attention(q, k, v)`) and use that name here")


def _arguments(call: ast.Call) -> dict:
    names = ("q", "k", "v") + (("width",) if KINDS[call.func] != "full" else ()) + ("prefix",)
    given = dict(zip(names, call.args))
    given.update({k.name: k.value for k in call.kwargs})
    return given


def _site(call, name, const, graph, params, report) -> AttentionSite | None:
    kind = KINDS[call.func]
    args = _arguments(call)
    width = None
    if kind != "full":
        width = const(args["width"])
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            what = "window" if kind == "window" else "segment size"
            report(args["width"], f"{what} {width!r} is not a positive integer",
                   f"a {what} >= 1", "it counts tokens, the current one included")
            return None
    keys, values = args["k"], args["v"]
    streams = len(keys.items) if isinstance(keys, ast.Tuple) else 1
    if streams != (len(values.items) if isinstance(values, ast.Tuple) else 1) or streams == 0:
        report(call, f"`{call.func}` has {streams} key streams and "
               f"{len(values.items) if isinstance(values, ast.Tuple) else 1} value streams",
               "as many value streams as key streams", "write `(k_1, k_2)` and `(v_1, v_2)`: "
               "stream i's tokens have key k_i and value v_i")
        return None
    prefix = args.get("prefix")
    pair = None
    if prefix is not None:
        outer = graph.levels[OUTER].states
        ok = isinstance(prefix, ast.Tuple) and len(prefix.items) == 2 and all(
            isinstance(p, ast.Name) and p.id in outer and len(params[p.id].shape) == 2
            for p in prefix.items)
        if not ok:
            report(prefix, "`prefix` is not a pair of the outer level's matrices",
                   "prefix = (P_k, P_v), two states [N_p, width] declared outside the levels",
                   "persistent memory is N_p learned keys and values (Titans sec. 4)")
            return None
        pair = tuple(p.id for p in prefix.items)
        if params[pair[0]].shape[0] != params[pair[1]].shape[0]:
            report(prefix, f"the prefix has {params[pair[0]].shape[0]} keys and "
                   f"{params[pair[1]].shape[0]} values", "one value per persistent key",
                   "declare P_k and P_v with the same first dim")
            return None
    return AttentionSite(name, kind, width, streams, pair, call.span.line, call.span.col)
