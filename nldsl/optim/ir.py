"""The optimizer plan: pure data, no torch. `plan.py` builds it, `interpret.py` runs it,
`codegen.py` prints it as Python.

A `Write` says how one state changes in one unit. A closed form carries its `value`; otherwise
`autograd` holds the objective and the step is S <- decay S - lr grad L(S), taken with torch.func.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from nldsl.language import ast
from nldsl.errors import Source


@dataclass(frozen=True)
class AutogradStep:
    """S <- decay * S - lr * grad_S loss(S): the generic fallback for any objective. With lr and
    decay None it is the gradient itself, of `state` (a rule chain transforms it further)."""

    loss: ast.Expr
    lr: ast.Expr | None
    decay: ast.Expr | None
    state: str | None = None            # the state differentiated; None: the write's target


@dataclass(frozen=True)
class Write:
    """`target` <- `value` (or an autograd step), `repeat` times from `restart` when given."""

    target: str
    value: ast.Expr | None = None
    autograd: AutogradStep | None = None
    repeat: ast.Expr | None = None      # newton_schulz(cubic): this many GD steps
    restart: ast.Expr | None = None     # the value the state restarts from each unit
    accumulate: bool = False            # in a slower level: sum the per-unit changes, apply at writes
    derivation: str = "explicit"        # which row of the derivation table produced it
    origin: ast.Node | None = field(default=None, compare=False)  # its objective or update, for errors


@dataclass(frozen=True)
class StatePlan:
    name: str
    level: str
    shape: ast.Shape | None             # None for the parameter W
    init: ast.Expr | None
    persistent: bool = True             # False: restarted each unit, never stored


@dataclass(frozen=True)
class LevelPlan:
    name: str
    period: ast.Expr
    contexts: dict[str, ast.Expr]
    writes: list[Write]
    reads: dict[str, tuple[ast.Expr, bool]]   # name -> (value, before_write)


@dataclass(frozen=True)
class Plan:
    """One optimizer, lowered for fixed values of its boolean and string hyper-parameters."""

    name: str
    levels: list[LevelPlan]             # in update order: what a level reads is written first
    states: dict[str, StatePlan]
    hparams: list[str]                  # numeric hyper-parameters, read from the param group
    folded: dict[str, object] = field(default_factory=dict)  # bool/str values baked in
    source: Source | None = None        # the spec's text, for located compile errors

    def level_of(self, name: str) -> LevelPlan | None:
        for level in self.levels:
            if name in level.contexts or name in level.reads:
                return level
        return None
