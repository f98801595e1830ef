"""Token mixing downstream of the task levels, for nldsl.fuzzing_task.task_specs(downstream=...):
a construct that reads a task level's read `h` and mixes it across tokens, then reaches `out`.
The task gradient G of a token then runs through the segment's earlier tokens (docs/modules.md,
"Which derivative G is, and cut streams"), so a call's end inside a period must carry the
segment's nodes and graph to the next call (nldsl/module/task_state.py). Three kinds (KINDS):

- `backprop`: a non-task level `every 1 token backprop` (or `chunk C`) whose memory D learns
  from h in its key, its value or its objective's target (tests/test_module_task.py's
  DOWNSTREAM_BACKPROP): D's writes carry h's tokens forward;
- `conv`: `conv(h, width)` in `out`, in a stateless level's read or in its context;
- `attention`: `attention`, `window_attention` or `segment_attention` over h (its query, key
  or value) inline in `out`, in a read, or through named contexts.

A context may name another level's read only where it is read `before write` (a located error
otherwise): `Mix.before` says which task reads the spec must read so. `Mix.fast` says whether
the chunked schedule should run every level in a fast form (a level whose contexts or writes
use a task read has none: nldsl/lower/schedule.py)."""
from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

KINDS = ("backprop", "conv", "attention")


@dataclass
class Mix:
    lines: list[str]            # the module-level lines: a parameter, a level (or none)
    out: str                    # the new `out` expression
    before: set[str] = field(default_factory=set)
    fast: bool = True


def _out(draw, mixed: str, task_out: str, src: str) -> str:
    """`out` from the construct's value, beside the task output, h, or alone."""
    return draw(st.sampled_from([f"{mixed} + {task_out}", mixed, f"{mixed} + {src}"]))


def _backprop(draw, src: str, task_out: str) -> Mix:
    uses = draw(st.sets(st.sampled_from(["key", "value", "target"]), min_size=1))
    memory = draw(st.sampled_from(["[dim, dim] = 0", "[dim, dim] = 0",
                                   "mlp(dim -> dim, tanh)", "mlp(dim -> dim, tanh, residual)"]))
    key = f"l2norm({src})" if "key" in uses else "l2norm(x @ Wd)"
    target = src if "target" in uses else "vd"
    loss = draw(st.sampled_from(["l2(D(kd), {t})", "-dot(D(kd), {t})"])).format(t=target)
    decay = draw(st.sampled_from(["", ", decay = 0.9"]))
    chunk = draw(st.sampled_from(["", "", f" chunk {draw(st.integers(2, 3))}"]))
    query = draw(st.sampled_from(["kd", "x"]))
    level = [f"level down every 1 token{chunk} backprop {{", f"  state D : {memory}",
             f"  key kd = {key}", f"  value vd = {src if 'value' in uses else 'x'}",
             f"  minimize {loss} by gd(lr = 0.5{decay})", f"  read yd = D({query})", "}"]
    return Mix(level, _out(draw, "yd", task_out, src),
               {src} if uses & {"key", "value"} else set(), fast=False)


def _conv(draw, src: str, task_out: str) -> Mix:
    width = draw(st.integers(1, 3))
    conv = draw(st.sampled_from(["conv({s}, {w})", "silu(conv({s}, {w}))",
                                 "conv(tanh({s}), {w})"])).format(s=src, w=width)
    where = draw(st.sampled_from(["out", "read", "context"]))
    if where == "out":
        return Mix([], _out(draw, conv, task_out, src))
    if where == "read":
        return Mix(["level down every 1 token {", f"  read cd = {conv}", "}"],
                   _out(draw, "cd", task_out, src))
    return Mix(["level down every 1 token {", f"  key kd = {conv}", "  read cd = kd", "}"],
               _out(draw, "cd", task_out, src), {src}, fast=False)


def _attention(draw, src: str, task_out: str) -> Mix:
    func = draw(st.sampled_from(["attention({})", "window_attention({}, {w})",
                                 "segment_attention({}, {w})"]))
    where = draw(st.sampled_from(["out", "read", "context"]))
    # 2 heads: an argument of width 2 * dim (`@ Wh`) splits into heads of width dim, one of
    # width dim broadcasts over them; one must split (validation/shapes.py refuses a read the
    # same for every head), and the merged read [2 * dim] is projected back by Wo
    heads = 1 if where == "out" else draw(st.sampled_from([1, 2]))
    pool = [src, "x @ Wd", "x"] + ([f"{src} @ Wh", "x @ Wh"] if heads == 2 else [])
    args = draw(st.lists(st.sampled_from(pool), min_size=3, max_size=3))
    reach = draw(st.integers(0, 2))
    args[reach] = src                                                   # h reaches q, k or v
    if heads == 2 and not any("Wh" in a for a in args):
        args[(reach + draw(st.integers(1, 2))) % 3] = draw(st.sampled_from([f"{src} @ Wh",
                                                                            "x @ Wh"]))
    call = lambda a: func.format(", ".join(a), w=draw(st.integers(1, 4)))
    if where == "out":
        return Mix([], _out(draw, call(args), task_out, src))
    head = f"level down every 1 token heads {heads}{draw(st.sampled_from(['', ' backprop']))} {{"
    od = "od" if heads == 1 else "od @ Wo"
    if where == "read":
        return Mix([head, f"  read od = {call(args)}", "}"], _out(draw, od, task_out, src))
    contexts = [f"  {role} {name} = {a}" for role, name, a in
                zip(("query", "key", "value"), ("qd", "kd", "vd"), args)]
    return Mix([head] + contexts + [f"  read od = {call(['qd', 'kd', 'vd'])}", "}"],
               _out(draw, od, task_out, src), {src}, fast=False)


def downstream(draw, kind: str, reads: list[str], task_out: str) -> Mix:
    """A construct of `kind` over one of the task levels' `reads` (drawn), reaching `out`."""
    src = draw(st.sampled_from(reads))
    mix = {"backprop": _backprop, "conv": _conv, "attention": _attention}[kind](draw, src, task_out)
    used = " ".join(mix.lines + [mix.out])
    for name, shape in (("Wd", "[dim, dim]"), ("Wh", "[dim, 2 * dim]"), ("Wo", "[2 * dim, dim]")):
        if name in used:
            mix.lines.insert(0, f"state {name} : {shape} = normal(0.5)")
    return mix
