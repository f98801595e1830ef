"""What the module compiler cannot compile yet: one table, one located error per use.

Every entry names the construct and says what to do instead. `check_supported` reports every
unsupported use in a spec at once, before anything is built.
"""
from __future__ import annotations

from nldsl.language import ast
from nldsl.language.consteval import calls_in
from nldsl.errors import NLDSLCompileError, Problem
from nldsl.graph import OUTER
from nldsl.lower.derive import chain_steps
from nldsl.lower.task import is_task
from nldsl.lower.windows import window_problems

#: built-in -> why the module compiler rejects it today.
UNSUPPORTED_CALLS = {
    "grad": "gradients of the task loss inside a module's expressions are not compiled "
            "(a level learns from the task loss by `minimize task`)",
    "newton_schulz": "Newton-Schulz inside a module's expressions is not lowered yet",
}
UNSUPPORTED_RULES = {
    "solve": "closed-form `solve` is compiled for optimizers only",
}
#: rules that may not be the last of a module's rule chain (they do not apply an update).
UNSUPPORTED_LAST = {
    "newton_schulz": "a Newton-Schulz rule that restarts a fast state from its initial value "
                     "each token is not lowered for modules",
}


def compile_error(node: ast.Node, message: str, expected: str, hint: str, source) -> NLDSLCompileError:
    return NLDSLCompileError([_problem(node, message, expected, hint, source)])


def _problem(node, message, expected, hint, source) -> Problem:
    span = node.span
    return Problem(message, span.line, span.col, span.end_line or None, span.end_col or None,
                   expected, hint, source)


def check_supported(spec) -> None:
    problems: list[Problem] = []
    report = lambda node, message, expected, hint: problems.append(
        _problem(node, message, expected, hint, spec.source))
    graph = spec.graph
    for level in graph.levels.values():
        if level.name == OUTER:
            continue
        if level.name.startswith("_"):
            report(level.decl, f"level name {level.name!r} starts with '_'", "a name without a "
                   "leading underscore", "the module state keeps '_stream' for its own entries")
        for state in level.states.values():
            init = state.decl.init
            if isinstance(init, ast.InitLearned) and (init.by or OUTER) != OUTER and \
                    not _nested_cms(graph, level, state.name, init.by):
                report(init, f"{state.name}: an initial state learned by a token level "
                       f"({init.by!r}) is compiled for a nested CMS only, where both levels "
                       "learn from the task loss", "`init learned` (by the outer level), or "
                       "`minimize task` on both levels", "a nested CMS block (eq. 72) restarts "
                       "from a slower task level's state at each of its writes; use `init "
                       "learned` for any other memory")
        _check_task_level(spec, level, report)
        for objective in level.objectives:
            _check_objective_convs(objective, report)
            if not is_task(objective):
                _check_rules(level, objective, graph, spec.source, problems, report)
                if objective.rules[-1].name == "dgd":
                    _check_precondition(objective, level, report)
        window_problems(level, graph, report)
        expressions = [c.value for c in level.contexts.values()] + \
            [o.loss for o in level.objectives] + [u.value for u in level.updates] + \
            [r.value for r in level.reads.values()]
        for context in level.contexts.values():
            for name in _names(context.value):
                reads = graph.levels[graph.owner(name)].reads if graph.owner(name) else {}
                if graph.owner(name) not in (None, level.name, OUTER) and name in reads and \
                        not reads[name].before_write:
                    report(context, f"context {context.name!r} uses {name!r}, a read of another "
                           "level", "a context of inputs, states, contexts and `before write` "
                           "reads", "contexts are computed before this unit's writes: use the "
                           "other level's state, or read it `before write`")
        _report_calls(expressions, report)
    _report_calls([c.value for c in graph.levels[OUTER].contexts.values()] +
                  ([graph.output] if graph.output is not None else []), report)
    if problems:
        raise NLDSLCompileError(problems)


def _nested_cms(graph, level, state: str, teacher: str) -> bool:
    """Eq. 72 as the task driver runs it (lower/task.py, `nest_inits`): `state` is written by
    its level's `minimize task` and the teacher level learns from the task loss too."""
    def task_targets(info):
        return {o.state or next(iter(info.states)) for o in info.objectives if is_task(o)}
    return state in task_targets(level) and teacher in graph.levels and \
        bool(task_targets(graph.levels[teacher]))


def _check_task_level(spec, level, report) -> None:
    """A level that learns from the task loss (module/task.py's driver writes it) is frozen
    inside the module: it learns by `gd` with rates known before the stream starts, and has no
    other write."""
    task = [o for o in level.objectives if isinstance(o.loss, ast.Name) and o.loss.id == "task"]
    if not task:
        return
    hparams = {h.name for h in spec.decl.hparams}
    for objective in task:
        rule = objective.rules[0]
        if rule.name != "gd":
            report(rule, f"`minimize task by {rule.name}` is not compiled yet", "`minimize task "
                   "by gd(lr = ..., decay = ...)`", "the task driver applies the gd rule at the "
                   "level's period")
            continue
        for arg in list(rule.args) + [k.value for k in rule.kwargs]:
            if _names(arg) - hparams:
                report(arg, "the rate of a `minimize task` level uses "
                       f"{', '.join(sorted(_names(arg) - hparams))}, not a hyper-parameter",
                       "numbers and hyper-parameters", "the driver sums the period's gradients "
                       "at one state, so the rate must be one number per level")
    others = [o for o in level.objectives if o not in task]
    for node in others + list(level.updates):
        report(node, f"level {level.name!r} learns from the task loss and has another write",
               "a level whose writes are all `minimize task`", "put the other write in a level "
               "of its own")
    if level.chunk is not None:
        report(level.chunk, "`chunk` on a level that learns from the task loss", "no "
               "chunk: the level's period is its chunk", "its gradients are all taken at its "
               "last written state")
    if level.heads is not None:
        report(level.heads, "`heads` on a level that learns from the task loss is not "
               "compiled yet", "a level without heads", "split the memory by hand")


def _check_rules(level, objective, graph, source, problems, report) -> None:
    """A rule chain as lower/derive.py's `chain_steps` lowers it, for module states: no
    Newton-Schulz restart rule, Newton-Schulz transforms only on matrices and MLP memories, no
    buffered rule on a level that writes every N > 1 tokens (its buffer would need a pending
    sum of its own)."""
    rules = objective.rules
    for rule in rules:
        if rule.name in UNSUPPORTED_RULES:
            report(rule, f"`{rule.name}`: {UNSUPPORTED_RULES[rule.name]}",
                   "gd, dgd, ema or momentum", "write the update explicitly")
    if rules[-1].name in UNSUPPORTED_LAST:
        report(rules[-1], f"`{rules[-1].name}`: {UNSUPPORTED_LAST[rules[-1].name]}",
               "gd, dgd, ema or momentum last", "orthogonalise the update inside a chain: "
               "`by momentum(lr, beta) then newton_schulz(5) then gd(lr)`")
        return
    try:
        steps, _ = chain_steps(objective, lambda rule, i: rule, source)
    except NLDSLCompileError as err:
        problems.extend(err.problems)
        return
    target = objective.state or next(iter(level.states))
    if any(step.rule == "newton_schulz" for step in steps) and not _matrix(graph, target):
        report(rules[next(s.position for s in steps if s.rule == "newton_schulz") - 1],
               f"newton_schulz orthogonalises matrices, and {target} is neither a matrix nor an "
               "mlp memory", "a state of shape [m, n] or mlp(...)", "Newton-Schulz acts on each "
               "weight matrix (docs/language.md, Chains)")
    buffered = [rules[s.position - 1] for s in steps if s.buffer is not None]
    if rules[-1].name == "momentum" and not level.once:     # `once`: one step per period
        buffered.append(rules[-1])
    if buffered and level.period != 1:
        report(buffered[0], f"{buffered[0].name} on a level that writes every N > 1 tokens is "
               "not compiled yet (its buffer would need a pending sum)", f"`{buffered[0].name}` "
               "on an `every 1 token` level", "use gd, or make the level write every token")


def _matrix(graph, name: str) -> bool:
    shape = graph.state(name).decl.shape
    while isinstance(shape, ast.LikeShape):
        shape = graph.state(shape.name).decl.shape
    return isinstance(shape, ast.MLPShape) or (isinstance(shape, ast.TensorShape)
                                               and len(shape.dims) == 2)


def _check_precondition(objective, level, report) -> None:
    """dgd(precondition = true) multiplies the weight that takes the key k of l2(S(k), v)."""
    from nldsl.lower.derive import loss_key, rule_arguments
    rule = objective.rules[-1]
    flag = rule_arguments(rule)["precondition"]
    if not isinstance(flag, ast.Bool):
        report(rule, "dgd's `precondition` must be true or false in the spec", "precondition = "
               "true or precondition = false", "the flag changes the rule's form, not a value")
        return
    target = objective.state or next(iter(level.states))
    if flag.value and loss_key(objective.loss, target) is None:
        report(rule, f"dgd(precondition = true) on {target} needs a key: the objective has no "
               f"l2({target}(k), v) term", f"l2({target}(k), v) or l2({target} @ k, v) in the "
               "objective", "eq. 88's (decay I - lr k k^T) multiplies the weight that takes k; "
               "without a key use plain dgd")


def _check_objective_convs(objective, report) -> None:
    """A conv's kernel and cache belong to a definition (docs/language.md, `conv`), and it runs
    once per token at that definition; one written in an objective or its rule has neither."""
    parts = [objective.loss] + [a for rule in objective.rules for a in rule.args] + \
        [k.value for rule in objective.rules for k in rule.kwargs]
    for call in (c for part in parts if part is not None for c in calls_in(part)):
        if call.func == "conv":
            report(call, "a conv inside an objective has no definition to own its kernel",
                   "conv in a context, a read, an update or `out`", "name it: `let c = "
                   "conv(...)` in the level, then use c in the objective")


def _report_calls(expressions, report) -> None:
    for expr in expressions:
        for call in calls_in(expr):
            if call.func in UNSUPPORTED_CALLS:
                report(call, f"`{call.func}`: {UNSUPPORTED_CALLS[call.func]}; the module "
                       "compiler does not support it yet", "the built-ins of docs/modules.md",
                       "see docs/modules.md, 'What compiles'")


def _names(expr) -> set[str]:
    from nldsl.language.consteval import names_in
    return {n.id for n in names_in(expr)}
