"""Levels that learn from the task loss (`minimize task by gd(lr, decay)`): their lowering and
their form in the chunked schedule. Pure data, no torch.

NL eq. 71: block l writes every C tokens the sum of its tokens' task-gradient steps, all taken
at its last written state theta_i,

    theta_{i+1} = theta_i + sum_{t = i-C+1}^{i} ((decay - 1) theta_i - lr grad L_t(theta_i))
                  if i = 0 mod C, else theta_i                                         (71)

(decay 1 is the paper's equation; a decay is the gd rule's, per token as for any level:
the `every N` sum of per-token changes of docs/language.md, "Frequency and chunk semantics").
Between writes the level is frozen, so inside the module it is a level without writes: its
reads are plain functions of its states, evaluated for all tokens of a call at once
(`FrozenForm`). The writes are the task driver's (module/task.py), which alone sees the loss.

NL eq. 72 (nested CMS): `init learned by s` on a state theta of level s+1 makes its initial
state Phi a state of level s (`theta.init`), written by s's rule from the task gradient of the
period's tokens with respect to Phi; block s+1 restarts from Phi at the start of each period of
s (t = 0, C^(s), 2 C^(s), ...), so a period of s must be whole periods of s+1 (`nest_inits`).
The gradient by Phi is the chain rule through block s+1's writes since its restart (and through
whatever else depends on it since), which the driver takes by autograd (module/task.py).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from nldsl.language import ast
from nldsl.language.builtins import TASK
from nldsl.graph import OUTER
from nldsl.lower.derive import mentions, num, rule_arguments
from nldsl.lower.program import FastState, ModuleWrite, TokenLevel

#: the suffix of the state that holds a nested block's initial state in its teacher's level
INIT = ".init"


def is_task(objective: ast.Objective) -> bool:
    """`minimize task`: the level learns from the outer task loss (eq. 71)."""
    return isinstance(objective.loss, ast.Name) and objective.loss.id == TASK


def task_write(objective: ast.Objective, target: str) -> ModuleWrite:
    """`minimize task by gd(lr, decay)` -> S <- decay S - lr G, G the task loss's gradient;
    the gd rule's arguments as the derivation table reads them (unsupported.py allows gd only,
    with rates that are hyper-parameter expressions)."""
    args = rule_arguments(objective.rules[0])
    return ModuleWrite(target, "task", lr=args["lr"], decay=args.get("decay", num(1)),
                       derivation="gd on the task loss")


@dataclass(frozen=True)
class FrozenForm:
    """A level without writes in this module: its reads over a call are functions of its
    states as they were at the call's start (the task driver cuts calls at its writes)."""

    reads: dict[str, ast.Expr]


def frozen_form(level: TokenLevel) -> FrozenForm | None:
    """The level's frozen form, or None: it must have states but no writes here (a task level,
    or a level of a frozen program: lower/freeze.py). A task level must have no heads and no
    context of its own states (the task driver's recorded products and bound states assume
    neither). A level that reads through a derived memory (`let W = A / norm(A)`) runs the
    reference: the frozen form applies states only."""
    if not level.states or level.writes or level.once or level.memories:
        return None
    if level.task and (level.heads is not None or any(
            mentions(value, s) for value in level.contexts.values() for s in level.states)):
        return None
    return FrozenForm({name: value for name, (value, _) in level.reads.items()})


def nest_inits(levels: list[TokenLevel], spec) -> list[TokenLevel]:
    """The levels with eq. 72 made explicit: for each state theta of a level b whose initial
    state is learned by a token level a (`init learned by a`; unsupported.py has allowed only
    levels that both learn from the task loss), a gets the state `theta.init` (starting, like
    theta, from the learned Param `theta_init`), written by a's first `minimize task` rule, and
    theta restarts from it (`FastState.restart`). a's period must be a multiple of b's, so that
    each restart falls on a write of b (a located error otherwise)."""
    from nldsl.lower.unsupported import compile_error     # unsupported.py imports this module
    by_name = {level.name: level for level in levels}
    for level in levels:
        for name, state in level.states.items():
            info = spec.graph.levels[level.name].states[name]
            by = getattr(info.decl.init, "by", None)     # `init learned`: the outer level's
            teacher = by_name.get(by) if by not in (None, OUTER) else None
            if teacher is None:
                continue
            if teacher.period % level.period:
                raise compile_error(info.decl.init, f"{name} restarts from a state of level "
                                    f"{teacher.name!r} every {teacher.period} tokens, which is "
                                    f"not a whole number of periods of level {level.name!r} "
                                    f"({level.period})", f"a period of {teacher.name!r} that is "
                                    f"a multiple of {level.period}", "a nested block restarts at "
                                    "one of its own writes (eq. 72): make the periods nest",
                                    spec.source)
            init = name + INIT
            rule = teacher.task[0]
            write = ModuleWrite(init, "task", lr=rule.lr, decay=rule.decay,
                                derivation=f"gd on the task loss, by the chain rule through "
                                f"{level.name}'s writes since its restart (eq. 72)")
            teacher = replace(teacher, states={**teacher.states, init: FastState(
                init, state.shape, None, state.learned, state.mlp)}, task=teacher.task + (write,))
            by_name[teacher.name] = teacher
            by_name[level.name] = replace(by_name[level.name], states={
                **by_name[level.name].states, name: replace(state, restart=(teacher.name, init))})
    return [by_name[level.name] for level in levels]
