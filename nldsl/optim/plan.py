"""Lower an optimizer spec to a `Plan`: per level, its contexts, derived writes and reads, in
update order; boolean and string hyper-parameters folded in, states nobody reads dropped.

Pure data in, data out; no torch. The optimizer caches one plan per folded values.
"""
from __future__ import annotations

from nldsl.language import ast
from nldsl.language.consteval import NotConstant, evaluate, hparam_values, names_in
from nldsl.errors import NLDSLCompileError, NLDSLError, Problem
from nldsl.language.builtins import RULES
from nldsl.lower.derive import derive_writes, located, num
from nldsl.optim.ir import LevelPlan, Plan, StatePlan, Write
from nldsl.optim.plan_checks import check_plan
from nldsl.optim.solve import Names, lower_solve

PARAM = "W"


def foldable(decl: ast.SpecDecl, values: dict) -> dict:
    """The hyper-parameters baked into a plan: those whose value is a bool or a string."""
    return {k: v for k, v in values.items() if isinstance(v, (bool, str)) or
            isinstance(v, tuple) and v and all(isinstance(x, str) for x in v)}


def fold(expr, consts: dict):
    """Substitute the folded hyper-parameters and resolve the conditionals they decide."""
    if expr is None or not isinstance(expr, ast.Node):
        return expr
    if isinstance(expr, ast.Name) and expr.id in consts:
        value = consts[expr.id]
        return ast.Bool(value=value) if isinstance(value, bool) else ast.String(value=value)
    if isinstance(expr, ast.Conditional):
        cond = fold(expr.cond, consts)
        try:
            decided = evaluate(cond, {})
        except (NotConstant, TypeError, ValueError, ArithmeticError):
            return expr.model_copy(update=dict(cond=cond, then=fold(expr.then, consts),
                                               otherwise=fold(expr.otherwise, consts)))
        return fold(expr.then if decided else expr.otherwise, consts)
    return map_children(expr, lambda child: fold(child, consts))


def map_children(expr: ast.Node, f) -> ast.Node:
    """A copy of `expr` with `f` applied to each child node (and to each node of a list field)."""
    updates = {}
    for field, value in expr:
        if isinstance(value, ast.Node):
            updates[field] = f(value)
        elif isinstance(value, list):
            updates[field] = [f(v) for v in value]
    return expr.model_copy(update=updates)


def drop_zero_terms(expr, zeros: frozenset):
    """`a + h * b`, `a - b * h`, `h * b + a` -> `a` for a hyper-parameter h that is 0 now:
    PyTorch skips such a term (`if weight_decay != 0`), so 0 * inf never makes a NaN. Only the
    expressions change; every state is still kept and written."""
    if not zeros or not isinstance(expr, ast.Node):
        return expr
    if isinstance(expr, ast.Binary) and expr.op in "+-":
        if _zero_product(expr.right, zeros):
            return drop_zero_terms(expr.left, zeros)
        if expr.op == "+" and _zero_product(expr.left, zeros):
            return drop_zero_terms(expr.right, zeros)
    return map_children(expr, lambda child: drop_zero_terms(child, zeros))


def _zero_product(expr, zeros) -> bool:
    return isinstance(expr, ast.Binary) and expr.op == "*" and any(
        isinstance(side, ast.Name) and side.id in zeros for side in (expr.left, expr.right))


def _without_zero_terms(plan: Plan, zeros: frozenset) -> Plan:
    def write(w: Write) -> Write:
        return Write(**{**w.__dict__, "value": drop_zero_terms(w.value, zeros),
                        "restart": drop_zero_terms(w.restart, zeros)})
    levels = [LevelPlan(lv.name, lv.period, {k: drop_zero_terms(v, zeros) for k, v in lv.contexts.items()},
                        [write(w) for w in lv.writes],
                        {k: (drop_zero_terms(v, zeros), b) for k, (v, b) in lv.reads.items()})
              for lv in plan.levels]
    return Plan(plan.name, levels, plan.states, plan.hparams, plan.folded, plan.source)


def lower(spec, folded: dict | None = None, zeros: frozenset = frozenset()) -> Plan:
    """Spec -> Plan for the given bool/str hyper-parameter values (defaults otherwise); terms
    scaled by a hyper-parameter in `zeros` (those that are 0 now) dropped (`drop_zero_terms`)."""
    decl = spec.decl
    if decl.kind != "optimizer":
        raise NLDSLError(f"{decl.name} is a module; nldsl.optimizer compiles optimizer specs")
    consts = foldable(decl, hparam_values(decl))
    consts.update(folded or {})
    graph = spec.graph
    states: dict[str, StatePlan] = {PARAM: StatePlan(PARAM, graph.owner(PARAM) or "", None, None)}
    names = _names(graph)
    taken = names.current | names.contexts | {h.name for h in decl.hparams}
    levels = []
    for name in graph.update_order():
        info = graph.levels[name]
        inits = {s.name: fold(s.decl.init.value, consts) if isinstance(s.decl.init, ast.InitValue)
                 else None for s in info.states.values()}
        writes, hidden, restarted = [], [], set()
        for objective in info.objectives:
            lowered = _lower_objective(objective, info, inits, consts, names, taken, spec.source)
            writes += lowered[0]
            hidden += lowered[1]
            restarted |= lowered[2]
        writes += [Write(u.target, value=fold(u.value, consts), origin=u) for u in info.updates]
        for state in info.states.values():
            states[state.name] = StatePlan(state.name, name, state.decl.shape, inits[state.name],
                                           persistent=state.name not in restarted)
        for hidden_name, shape, persistent in hidden:
            states[hidden_name] = StatePlan(hidden_name, name, shape, num(0) if persistent else None,
                                            persistent=persistent)
        levels.append(LevelPlan(name, fold(info.every, consts),
                                {c.name: fold(c.value, consts) for c in info.contexts.values()},
                                writes, {r.name: (fold(r.value, consts), r.before_write)
                                         for r in info.reads.values()}))
    _check_inits(states, spec.source)
    numeric = [h.name for h in decl.hparams if h.name not in consts]
    plan = _drop_unread(Plan(decl.name, levels, states, numeric, consts, spec.source))
    check_plan(plan)
    return _without_zero_terms(plan, frozenset(zeros) & set(numeric))


def _lower_objective(objective: ast.Objective, info, inits: dict, consts: dict, names: Names,
                     taken: set, source) -> tuple[list[Write], list[tuple], set[str]]:
    """One objective's writes (each tagged with the objective, for errors), its hidden states
    as (name, shape, persistent), and the state it restarts each unit (newton_schulz), if any."""
    target = objective.state or _only_state(info, objective, source)
    objective = fold(objective, consts)
    if objective.rules[-1].name == "solve":
        solved, sums = _solve(objective, target, info, names, source)
        return ([Write(**{**w.__dict__, "origin": objective}) for w in solved],
                [(s, _shape_of(info, target), True) for s in sums], set())
    for rule in objective.rules:
        if "clip" in _given(rule):
            raise located(rule, f"`{rule.name}(clip = ...)`: gradient-norm clipping is compiled "
                          "for module memories only", f"{rule.name} without clip", "drop `clip`, or "
                          "scale the update in an explicit write (`S <- ...`)", source)
    deep = target in info.states and isinstance(info.states[target].decl.shape, ast.MLPShape)
    every = _period_is_one(info.every)
    if deep and not every:
        raise located(objective, f"{target}: an mlp memory in a level slower than every step is "
                      "not compiled yet (its per-step changes would be summed weight by weight)",
                      f"level {info.name} every 1 step", "write the level every step, or use a "
                      "tensor state", source)
    restarts = [r.name for r in objective.rules] == ["newton_schulz"]
    if restarts and not every:
        raise located(objective.rules[0], f"level {info.name}: a newton_schulz rule restarts its "
                      "state every step; it is compiled for levels every 1 step",
                      f"level {info.name} every 1 step", "move the state to a level every 1 "
                      "step, or orthogonalise in an explicit update (`S <- newton_schulz(...)`)",
                      source)
    derived = derive_writes(objective, target, inits.get(target), deep, source)
    _check_hidden(derived, objective, info, taken, source)
    hidden = [(s, _shape_of(info, target), True) for s in derived.buffers]
    hidden += [(s, _shape_of(info, target), False) for s in derived.temporaries]
    writes = [Write(**{**w.__dict__, "accumulate": not every and w.target == target,
                       "origin": objective}) for w in derived.writes]
    return writes, hidden, {target} if restarts else set()


def _given(rule: ast.Rule) -> set[str]:
    """The names of the arguments a rule call passes (positional ones by RULES' order)."""
    return set(RULES[rule.name].params[:len(rule.args)]) | {k.name for k in rule.kwargs} \
        if rule.name in RULES else set()


def _shape_of(info, target: str):
    """The declared shape of a level's state (None for W): a hidden state is shaped like it."""
    return info.states[target].decl.shape if target in info.states else None


def _check_hidden(derived, objective: ast.Objective, info, taken: set, source) -> None:
    """A rule's hidden states need names of their own, and a level that writes every step: in
    a slower one the buffer's per-step updates would be summed over the period, which is no
    rule's meaning (the module compiler refuses the same)."""
    hidden = derived.buffers + derived.temporaries
    where = objective.rules[1] if len(objective.rules) > 1 else objective.rules[0]
    if hidden and not _period_is_one(info.every):
        raise located(where, f"level {info.name}: momentum and rule chains that keep a buffer or "
                      "an autograd gradient are compiled for levels every 1 step",
                      f"level {info.name} every 1 step", "write the level every step, or write "
                      "the update explicitly (`S <- ...`)", source)
    collisions = sorted(set(hidden) & taken)
    if collisions:
        raise located(objective, f"the rule's hidden states need the names {collisions}",
                      "no spec name starting with `_momentum_`, `_chain_` or `_grad_`",
                      "rename the spec's name", source)


def _check_inits(states: dict[str, StatePlan], source) -> None:
    """A state's initial value may use other states' initial values, not its own (`m = m`,
    `m = v` with `v = m`): that has no value, a located compile error."""
    uses = {s.name: {n.id for n in names_in(s.init)} & states.keys() - {PARAM}
            for s in states.values() if s.init is not None}
    done: set[str] = set()
    for start in uses:
        path, todo = [], [(start, iter(uses[start]))]
        while todo:
            name, rest = todo[-1]
            path = path if path and path[-1] == name else path + [name]
            nxt = next(rest, None)
            if nxt is None:
                done.add(name)
                todo.pop()
                path.pop()
            elif nxt in path:
                init = states[start].init
                cycle = " -> ".join(path[path.index(nxt):] + [nxt])
                raise NLDSLCompileError([Problem(
                    f"state {start}: its initial value refers to itself ({cycle})", init.span.line,
                    init.span.col, init.span.end_line or None, init.span.end_col or None,
                    "an initial value from numbers, hyper-parameters, W or other states",
                    "start it at 0 or at another state's value", source)])
            elif nxt not in done and nxt in uses:
                todo.append((nxt, iter(uses[nxt])))


def _names(graph) -> Names:
    """States and reads (their current value) and contexts (per unit) of every level."""
    levels = graph.levels.values()
    current = {PARAM} | {s for lv in levels for s in lv.states} | {r for lv in levels for r in lv.reads}
    return Names(frozenset(current), frozenset(c for lv in levels for c in lv.contexts))


def _solve(objective: ast.Objective, target: str, info, names: Names, source):
    """`by solve` (solve.py): in an every-step level, alone, on a tensor state."""
    where = objective.rules[-1].span
    problem = None
    if len(objective.rules) != 1:
        problem = ("`solve` ends a rule chain", "`by solve` alone", "drop the rules before it")
    elif not _period_is_one(info.every):
        problem = ("`solve` is compiled for levels every 1 step", "level ... every 1 step",
                   "a slower level would sum the solutions' changes, which minimises nothing")
    elif target in info.states and isinstance(info.states[target].decl.shape, ast.MLPShape):
        problem = ("an mlp memory has no closed-form minimiser", "a tensor state (`like W`)",
                   "use `gd` or `dgd` (an autograd step)")
    if problem is not None:
        message, expected, hint = problem
        raise NLDSLCompileError([Problem(f"{target}: {message}", where.line, where.col,
                                         where.end_line or None, where.end_col or None,
                                         expected, hint, source)])
    return lower_solve(objective, target, names, source)


def _only_state(info, objective: ast.Objective, source) -> str:
    if len(info.states) == 1:
        return next(iter(info.states))
    if not info.states:
        return PARAM
    raise located(objective, f"level {info.name} has {len(info.states)} states: say which one "
                  "this objective trains", f"{sorted(info.states)[0]}: minimize ...",
                  "prefix the objective with the state's name and a colon", source)


def _period_is_one(every: ast.Expr) -> bool:
    return isinstance(every, ast.Number) and every.value == 1


def _used_names(node) -> set[str]:
    if node is None:
        return set()
    found = {n.id for n in names_in(node)}
    from nldsl.language.consteval import calls_in
    found |= {c.func for c in calls_in(node)}
    return found


def _drop_unread(plan: Plan) -> Plan:
    """Keep the writes that W's update needs, transitively; drop states nothing reads."""
    defs = {}
    for level in plan.levels:
        for write in level.writes:
            defs.setdefault(write.target, []).append(write)
        for name, value in level.contexts.items():
            defs.setdefault(name, []).append(value)
        for name, (value, _) in level.reads.items():
            defs.setdefault(name, []).append(value)
    live, todo = set(), [PARAM]
    while todo:
        name = todo.pop()
        if name in live:
            continue
        live.add(name)
        for d in defs.get(name, []):
            parts = [d] if isinstance(d, ast.Node) else [d.value, d.restart, d.repeat] + (
                [d.autograd.loss, d.autograd.lr, d.autograd.decay] if d.autograd else [])
            for part in parts:
                todo += [n for n in _used_names(part) if n not in live]
            if not isinstance(d, ast.Node) and d.autograd and d.autograd.state:
                todo.append(d.autograd.state)
        plan_state = plan.states.get(name)
        if plan_state is not None and plan_state.init is not None:
            todo += [n for n in _used_names(plan_state.init) if n not in live]
    levels = [LevelPlan(lv.name, lv.period, {k: v for k, v in lv.contexts.items() if k in live},
                        [w for w in lv.writes if w.target in live],
                        {k: v for k, v in lv.reads.items() if k in live}) for lv in plan.levels]
    states = {k: v for k, v in plan.states.items() if k in live}
    return Plan(plan.name, [lv for lv in levels if lv.writes or lv.reads or lv.contexts], states,
                plan.hparams, plan.folded, plan.source)
