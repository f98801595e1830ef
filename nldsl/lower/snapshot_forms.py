"""Recognise a level whose every value in a chunk is computed at the chunk start, by structure.

The form (module/snapshot_chunk.py computes it): a `chunk C > 1` level, written every token,
whose states are all `mlp(...)` memories, each written by one gradient write

    M_t = decay_t M_{t-1} - lr_t G_t,   G_t = grad_M loss_t at M_{t'}   (t' the chunk start)
    (`dgd(precondition = true)`: - lr_t (W_1,t-1 k_t) k_t^T besides, NL eq. 88 / 90)

or by a rule chain whose transforms are momentum or ema (G_t replaced by the chain's buffer,
linear in the chunk's gradients: module/snapshot_chain.py),

and whose contexts, gates, losses, keys and reads see the level's states only at the chunk
start: contexts and gradients do by definition (docs/language.md, "Chunks"), reads when they are
`before write`, gates when they name the states only through contexts. Then a chunk's contexts
(k, v, eta, alpha, self-generated values: NL eq. 90) are batched forwards at M_{t'}, every
token's gradient comes from one backward to the pre-activations of the loss's applications
M(u) (any number of them: a context inlined into the loss applies M again), and only the end
state needs the recurrence. A conv in a context or a read is computed once per chunk from its
cache, its output data to the inner gradients (as the reference's once-per-token conv).
Self-modifying Titans (NL sec. 8), Hope's self-modifying levels and any spec of this structure
take it. Other levels' contexts and reads are sequences by then (levels run in update order);
other levels' states, or this level's states seen from outside, are not the form (they would
be read per token).
"""
from __future__ import annotations

from dataclasses import dataclass

from nldsl.language import ast
from nldsl.language.builtins import shaped
from nldsl.language.consteval import calls_in, children, names_in
from nldsl.lower.derive import mentions
from nldsl.lower.program import BEFORE_WRITE, INPUT, SNAPSHOT, ModuleWrite, Program, TokenLevel


#: chain transforms whose buffer is linear in the gradients (module/snapshot_chain.py).
LINEAR_TRANSFORMS = ("momentum", "ema")


@dataclass(frozen=True)
class SnapshotForm:
    writes: tuple[ModuleWrite, ...]      # one gradient write per state, autograd loss
    contexts: tuple[str, ...]            # the level's contexts computed per chunk (at M_{t'})
    passes: tuple[tuple[str, ...], ...]  # states whose losses share one backward (_passes)
    reached: frozenset[str]              # contexts an inner gradient can reach (_reached_contexts)


#: The attention built-ins (language/builtins.py): their key-value cache follows the whole call.
ATTENTION = frozenset(shaped("attention"))


def snapshot_form(level: TokenLevel, program: Program) -> SnapshotForm | None:
    """The level's form, or None (the level then needs another form or the reference)."""
    if level.period != 1 or level.chunk <= 1 or level.heads is not None:
        return None
    states = set(level.states)
    if any(s.mlp is None for s in level.states.values()) or \
            sorted(w.target for w in level.writes) != sorted(states) or \
            any(w.kind != "gradient" or w.loss is None or
                any(step.rule not in LINEAR_TRANSFORMS for step in w.chain)
                for w in level.writes) or level.once or level.memories or \
            any(c.func == "window" for w in level.writes for c in calls_in(w.loss)):
        return None                       # Newton-Schulz, a window (even of width 1): not this form
    if set(level.hidden) != {step.buffer for w in level.writes for step in w.chain}:
        return None
    chained = [e for w in level.writes for step in w.chain for e in step.args.values()]
    others = {n for lv in program.levels if lv is not level for n in list(lv.states) + list(lv.hidden)}
    expressions = list(level.contexts.values()) + [r for r, _ in level.reads.values()] + \
        [e for w in level.writes for e in (w.loss, w.lr, w.decay, w.precondition, w.clip)
         if e is not None] + \
        chained
    if any(mentions(e, n) for e in expressions for n in others):
        return None
    if any(n.id in states for e in expressions for n in names_in(e)):
        return None                       # a state used other than as M(u)
    if any(c.func in states and (len(c.args) != 1 or c.kwargs) for e in expressions
           for c in calls_in(e)):
        return None
    if any(mentions(e, s) for e in [g for w in level.writes for g in (w.lr, w.decay, w.clip)
                                   if g is not None] + chained
           for s in states):
        return None                       # gates see the current state; contexts the snapshot
    if any(level.placements[n].stage not in (INPUT, SNAPSHOT) for n in level.contexts) or \
            any(level.placements[n].stage != BEFORE_WRITE for n in level.reads):
        return None
    if any(c.func in ATTENTION for r, _ in level.reads.values() for c in calls_in(r)):
        return None                       # a read runs per chunk: an attention's cache, per call
    outside = [program.output] + list(program.outer_contexts.values()) + [
        e for lv in program.levels if lv is not level
        for e in list(lv.contexts.values()) + [r for r, _ in lv.reads.values()] +
        [x for w in lv.writes for x in (w.loss, w.grad, w.value, w.lr, w.decay, w.beta,
                                        w.precondition) if x is not None]]
    if any(mentions(e, s) for e in outside for s in states):
        return None
    per_chunk = tuple(n for n in level.contexts if level.placements[n].stage == SNAPSHOT)
    return SnapshotForm(tuple(level.writes), per_chunk, _passes(level), _reached_contexts(level))


def _passes(level: TokenLevel) -> tuple[tuple[str, ...], ...]:
    """The written states in groups whose losses can share one backward: no loss of a group
    reaches another state of the group, so the gradient of their sum at a state's
    applications is its own loss's (M_v's loss reaches M_k through k = l2norm(M_k(x)): apart;
    M_v's and M_eta's reach neither each other: together). Groups in write order."""
    groups: list[list[tuple[str, set]]] = []
    for write in level.writes:
        reach = _reached(write.loss, level, ())
        group = next((g for g in groups if all(write.target not in r and other not in reach
                                               for other, r in g)), None)
        if group is None:
            groups.append(group := [])
        group.append((write.target, reach))
    return tuple(tuple(name for name, _ in group) for group in groups)


def _reached(expr: ast.Node, level: TokenLevel, seen: tuple, fresh: bool = False) -> set:
    """The level's states a gradient of expr can reach at their applications: their calls,
    through the level's contexts and reads by name; nothing under stopgrad (no gradient), and
    under a conv only through names (module/snapshot_chunk.py applies the memories in a conv's
    argument afresh, unrecorded: its output is data to the inner gradients)."""
    if isinstance(expr, ast.Call) and expr.func == "stopgrad":
        return set()
    inside = fresh or (isinstance(expr, ast.Call) and expr.func == "conv")
    found = {expr.func} if isinstance(expr, ast.Call) and expr.func in level.states and \
        not fresh else set()
    if isinstance(expr, ast.Name) and expr.id not in seen:
        named = level.contexts[expr.id] if expr.id in level.contexts else \
            level.reads[expr.id][0] if expr.id in level.reads else None
        if named is not None:
            found |= _reached(named, level, seen + (expr.id,))
    for child in children(expr):
        found |= _reached(child, level, seen, inside)
    return found


def _reached_contexts(level: TokenLevel) -> frozenset[str]:
    """The level's contexts an inner gradient can reach: named by a loss or key, or sharing a
    call with one (a context inlined into a loss: k = l2norm(M_k(x)) in M_k(k)), not under
    stopgrad, and the contexts these name. The chunk memoises a call once, so these are
    computed with autograd and their applications recorded; the others (v = M_v(x), seen only
    through stop-gradient targets; the gates eta, alpha) need neither without an outer
    gradient."""
    seen = set()
    for w in level.writes:
        for e in (w.loss, w.precondition):
            if e is not None:
                seen |= _graded(e)
    found = {n for n, e in level.contexts.items()
             if ast.Name(id=n) in seen or any(isinstance(c, ast.Call) and c in seen
                                              for c in _graded(e))}
    todo = list(found)
    while todo:
        for node in _graded(level.contexts[todo.pop()]):
            if isinstance(node, ast.Name) and node.id in level.contexts and node.id not in found:
                found.add(node.id)
                todo.append(node.id)
    return frozenset(found)


def _graded(expr: ast.Node) -> set:
    """Every subexpression of expr not under a stopgrad (the nodes a gradient can pass)."""
    if isinstance(expr, ast.Call) and expr.func == "stopgrad":
        return set()
    found = {expr}
    for child in children(expr):
        found |= _graded(child)
    return found
