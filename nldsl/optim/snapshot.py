"""What a step computes before its first write: every context, and the `before write` reads of
every-step levels (docs/language.md, "Ordering within a unit"), in dependency order.

Generated code writes states and W in place, so a context that *is* a state, or a view of one,
is copied; a plain read that a context uses is taken at its pre-write value, as the reference
schedule (interpret.py) does.
"""
from __future__ import annotations

from nldsl.language import ast
from nldsl.language.consteval import names_in
from nldsl.lower.emit import Emitter
from nldsl.optim.ir import Plan
from nldsl.optim.plan import PARAM
from nldsl.optim.printer import Printer, literal, user


def period_one(level) -> bool:
    return isinstance(level.period, ast.Number) and level.period.value == 1


#: Functions whose result is a view of their first argument (it shares the tensor's storage).
_VIEWS = {"transpose", "stopgrad"}


def aliases_state(plan: Plan, expr, seen: frozenset = frozenset()) -> bool:
    """Is `expr` a state (or W), or a view of one, possibly through contexts and reads that are?
    Writes are in place (W always, states in foreach code), so such a value must be copied to
    keep the value it had when it was computed."""
    if isinstance(expr, ast.Name):
        if expr.id == PARAM or expr.id in plan.states:
            return True
        definition = _definitions(plan).get(expr.id)
        return definition is not None and expr.id not in seen and \
            aliases_state(plan, definition, seen | {expr.id})
    if isinstance(expr, ast.Index) or (isinstance(expr, ast.Call) and expr.func in _VIEWS):
        inner = expr.value if isinstance(expr, ast.Index) else expr.args[0]
        return aliases_state(plan, inner, seen)
    if isinstance(expr, ast.Conditional):
        return aliases_state(plan, expr.then, seen) or aliases_state(plan, expr.otherwise, seen)
    return False


def _definitions(plan: Plan) -> dict:
    found = {n: v for lv in plan.levels for n, v in lv.contexts.items()}
    return found | {n: v for lv in plan.levels for n, (v, _) in lv.reads.items()}


def copied(plan: Plan, expr, text: str, foreach: bool) -> str:
    """`text` (the source of expr), copied when it may share a state's or W's storage."""
    if not aliases_state(plan, expr):
        return text
    return f"[t.clone() for t in {text}]" if foreach else f"{text}.clone()"


def snapshot(out: Emitter, plan: Plan, p: Printer, foreach: bool) -> None:
    """Contexts and `before write` reads of every-step levels, computed before any write
    (docs/language.md, ordering within a unit), as the reference schedule does; and the reads
    slower levels hold (from the state, computed at the first step), all in dependency order:
    a held read's first value may use a context, and a context a held read. Written into the
    step function's body (`out`)."""
    items = {n: v for lv in plan.levels for n, v in lv.contexts.items()}
    items |= {n: v for lv in plan.levels if period_one(lv) for n, (v, before) in lv.reads.items()
              if before}
    plain_reads = {n: v for lv in plan.levels if period_one(lv)
                   for n, (v, before) in lv.reads.items() if not before}
    held = {n: v for lv in plan.levels if not period_one(lv) for n, (v, _) in lv.reads.items()}
    used = {name.id for value in items.values() for name in names_in(value)}
    items = {n: v for n, v in plain_reads.items() if n in used} | items  # their pre-write value
    for name, value in dependency_order(items | held):
        source = copied(plan, value, p.expr(value)[0], foreach)
        if name in held:
            _held(out, p, name, source, foreach)
        else:
            p.emit(out, f"{user(name)} = {source}")


def _held(out: Emitter, p: Printer, name: str, source: str, foreach: bool) -> None:
    """A slower level's read: the value stored at its last write, or computed now at the first
    step (before any write, as the reference computes it)."""
    key = literal("read." + name)
    if foreach:
        with out.block(f"if any({key} not in st for st in states):  # first step"):
            p.emit(out, f"for st, x in zip(states, {source}):")
            with out.block():
                out.line(f"st.setdefault({key}, x)")
        out.line(f"{user(name)} = [st[{key}] for st in states]")
        return
    out.line(f"{user(name)} = state.get({key})")
    with out.block(f"if {user(name)} is None:"):
        p.emit(out, f"{user(name)} = state[{key}] = {source}")


def dependency_order(items: dict[str, ast.Expr]) -> list[tuple[str, ast.Expr]]:
    """`items` ordered so each comes after the items it uses (Kahn's algorithm, linear in the
    size of the expressions; the validator rejects cycles, any left over keep their order)."""
    uses = {n: {m.id for m in names_in(v) if m.id in items and m.id != n} for n, v in items.items()}
    users: dict[str, list[str]] = {n: [] for n in items}
    for name, used in uses.items():
        for other in used:
            users[other].append(name)
    waiting = {n: len(used) for n, used in uses.items()}
    ready = [n for n in items if not waiting[n]][::-1]
    ordered: list[str] = []
    while ready:
        name = ready.pop()
        ordered.append(name)
        for user_ in users[name]:
            waiting[user_] -= 1
            if not waiting[user_]:
                ready.append(user_)
    ordered += [n for n in items if waiting[n] > 0]
    return [(n, items[n]) for n in ordered]
