"""What the module compiler cannot compile yet: one table, one located error per use.

Every entry names the construct and says what to do instead. `check_supported` reports every
unsupported use in a spec at once, before anything is built.
"""
from __future__ import annotations

from nldsl import ast
from nldsl.consteval import calls_in
from nldsl.errors import NLDSLCompileError, Problem
from nldsl.graph import OUTER

#: built-in -> why the module compiler rejects it today.
UNSUPPORTED_CALLS = {
    "attention": "softmax attention needs a key-value cache over the stream",
    "window_attention": "sliding-window attention needs a key-value cache over the stream",
    "grad": "gradients of the task loss inside a module need the task-loss driver",
    "window": "the Omega rule's sliding window (Atlas) needs a ring buffer of past contexts",
    "newton_schulz": "Newton-Schulz inside a module's expressions is not lowered yet",
}
UNSUPPORTED_RULES = {
    "newton_schulz": "a Newton-Schulz rule on a fast state is not lowered yet",
    "solve": "closed-form `solve` is compiled for optimizers only",
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
            if isinstance(init, ast.InitLearned) and (init.by or OUTER) != OUTER:
                report(init, f"{state.name}: an initial state learned by a token level "
                       f"({init.by!r}) restarts every period of it, which is not compiled yet",
                       "`init learned` (by the outer level)", "nested CMS blocks come with the "
                       "task-loss driver")
        for objective in level.objectives:
            if isinstance(objective.loss, ast.Name) and objective.loss.id == "task":
                report(objective.loss, "`minimize task` inside a module needs the task-loss "
                       "driver", "an internal objective such as l2(M(k), v)", "CMS/Hope levels "
                       "that learn from the outer loss are compiled by a later stage")
            if len(objective.rules) > 1:
                report(objective.rules[1], "rule chains (`then`) are not compiled for modules "
                       "yet", "one learning rule", "write the chained update explicitly (`M <- ...`)")
            for rule in objective.rules:
                if rule.name in UNSUPPORTED_RULES:
                    report(rule, f"`{rule.name}`: {UNSUPPORTED_RULES[rule.name]}",
                           "gd, dgd, ema or momentum", "write the update explicitly")
            if objective.rules[0].name == "dgd":
                _check_precondition(objective, level, report)
            if objective.rules[0].name == "momentum" and level.period != 1:
                report(objective.rules[0], "momentum on a level that writes every N > 1 tokens "
                       "is not compiled yet", "momentum on an `every 1 token` level",
                       "use gd, or make the level write every token")
        expressions = [c.value for c in level.contexts.values()] + \
            [o.loss for o in level.objectives] + [u.value for u in level.updates] + \
            [r.value for r in level.reads.values()]
        for context in level.contexts.values():
            for name in _names(context.value):
                if graph.owner(name) not in (None, level.name, OUTER) and \
                        name in graph.levels[graph.owner(name)].reads:
                    report(context, f"context {context.name!r} uses {name!r}, a read of another "
                           "level", "a context of inputs, states and contexts", "contexts are "
                           "computed before this unit's writes: use the other level's state")
        _report_calls(expressions, report)
    _report_calls([c.value for c in graph.levels[OUTER].contexts.values()] +
                  ([graph.output] if graph.output is not None else []), report)
    if problems:
        raise NLDSLCompileError(problems)


def _check_precondition(objective, level, report) -> None:
    """dgd(precondition = true) multiplies the weight that takes the key k of l2(S(k), v)."""
    from nldsl.lower.derive import loss_key, rule_arguments
    rule = objective.rules[0]
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


def _report_calls(expressions, report) -> None:
    for expr in expressions:
        for call in calls_in(expr):
            if call.func in UNSUPPORTED_CALLS:
                report(call, f"`{call.func}`: {UNSUPPORTED_CALLS[call.func]}; the module "
                       "compiler does not support it yet", "the built-ins of docs/modules.md",
                       "see docs/modules.md, 'What compiles'")


def _names(expr) -> set[str]:
    from nldsl.consteval import names_in
    return {n.id for n in names_in(expr)}
