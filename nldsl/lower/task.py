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
"""
from __future__ import annotations

from dataclasses import dataclass

from nldsl import ast
from nldsl.builtins import TASK
from nldsl.lower.derive import mentions, num, rule_arguments
from nldsl.lower.program import ModuleWrite, TokenLevel


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
    """The level's frozen form, or None: it must have no writes here, no heads, and no context
    of its own states (the chunked schedule evaluates contexts without memory applications)."""
    if not level.task or level.writes or level.heads is not None:
        return None
    if any(mentions(value, s) for value in level.contexts.values() for s in level.states):
        return None
    return FrozenForm({name: value for name, (value, _) in level.reads.items()})
