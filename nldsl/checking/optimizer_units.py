"""One optimizer unit (one parameter tensor, one step) built from a drawn `Unit`, and the
closed-form writes of its plan set against the autograd step of the objectives they came from.

The plan is the optimizer's own (`nldsl.optim.plan.lower` with the drawn bool/str values folded
and the terms of zero hyper-parameters dropped, as `nldsl.optimizer` lowers it); the closed
form is evaluated by the reference interpreter (`interpret.Step`), so what is compared is
exactly what the `reference` schedule computes. W, grad(W) and every tensor state are drawn
standard normal in float64; the step count is the drawn one. Contexts are data, as in the
optimizer compiler: computed at the drawn state and held fixed while the objective is
differentiated (a context `g = grad(W) + weight_decay * W` does not add weight_decay * W to
grad L(W)). Autograd writes (mlp memories) are the interpreter's own torch.func step: there
is no derived formula to check.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from nldsl.language import ast
from nldsl.checking.rules import GRADIENT_RULES, autograd_gradient, dgd_key, step_rule
from nldsl.language.consteval import names_in
from nldsl.lower.derive import rule_arguments
from nldsl.optim.interpret import Step, initial_state
from nldsl.optim.plan import PARAM, fold, foldable, lower
from nldsl.language.printer import format_expr


@dataclass
class Comparison:
    """One write at one drawn unit: the compiler's value beside the rule's autograd step."""

    level: str
    target: str
    derivation: str
    formula: str
    compiled: dict          # "state" (and "momentum") -> the compiler's new value
    expected: dict | None   # the same by the rule's definition; None: not a gradient step
    inputs: dict            # name -> drawn value, for the report
    scale_inputs: list      # tensors whose magnitude sets the comparison's scale


def optimizer_plan(spec, values: dict):
    """(plan, numeric hyper-parameters) for drawn values, lowered as nldsl.optimizer does."""
    folded = foldable(spec.decl, values)
    numeric = {k: v for k, v in values.items() if k not in folded}
    zeros = frozenset(k for k, v in numeric.items() if type(v) in (int, float) and v == 0)
    return lower(spec, folded, zeros), numeric


def closed_form_writes(plan) -> list:
    """(level plan, write) for every write the compiler derived in closed form."""
    return [(level, w) for level in plan.levels for w in level.writes
            if w.autograd is None and w.derivation != "explicit"]


def objective_of(spec, level: str, target: str, folded: dict) -> ast.Objective:
    info = spec.graph.levels[level]
    for objective in info.objectives:
        trains = objective.state or (next(iter(info.states)) if len(info.states) == 1 else PARAM)
        if trains == target:
            return fold(objective, folded)
    raise LookupError(f"no objective trains {target} in level {level}")


def compare_writes(spec, unit) -> list[Comparison]:
    """Every closed-form write of the optimizer at the drawn unit."""
    plan, numeric = optimizer_plan(spec, unit.hparams)
    gen = torch.Generator().manual_seed(unit.seed)
    draw = lambda: torch.randn(unit.shape, generator=gen, dtype=torch.float64)
    param = draw()
    param.grad = draw()
    state = initial_state(plan, param, numeric)
    for name, value in state.items():
        if isinstance(value, torch.Tensor):
            state[name] = draw() if value.shape == param.shape else value
    state["step"] = unit.step
    fresh = lambda: Step(plan, param, dict(state), numeric)
    out = []
    for level, write in closed_form_writes(plan):
        if write.derivation.startswith("solve"):     # a minimiser and its sums, no gradient step
            out.append(Comparison(level.name, write.target, write.derivation, "", {}, None, {}, []))
            continue
        objective = objective_of(spec, level.name, write.target, plan.folded)
        compiled = {"state": fresh().compute(write)}
        out.append(Comparison(level.name, write.target, write.derivation,
                              f"{write.target} <- {format_expr(write.value)}", compiled,
                              _expected(plan, objective, write.target, fresh),
                              _inputs(objective, write.target, fresh, state, numeric, unit),
                              [state.get(write.target, param)]))
    return out


def _expected(plan, objective: ast.Objective, target: str, fresh):
    rule = objective.rules[0]
    if rule.name not in GRADIENT_RULES + ("newton_schulz",):
        return None
    step = fresh()
    args = {k: step.evaluate(v) for k, v in rule_arguments(rule).items()}

    def grad_at(value):
        unit = fresh()
        for name in dict.fromkeys(n.id for n in names_in(objective.loss)):
            if name != target:
                unit.lookup(name)       # contexts are data: taken at the drawn state, held fixed

        def loss_at(leaf):
            unit.values[target] = leaf
            return unit.evaluate(objective.loss)

        return autograd_gradient(loss_at, value)

    key = dgd_key(objective.loss, target) if rule.name == "dgd" else None
    norm2 = step.evaluate(ast.Call(func="dot", args=[key, key])) if key is not None else None
    restart = plan.states[target].init
    restart = step.evaluate(restart) if restart is not None else None
    current = step.lookup(target) if rule.name in GRADIENT_RULES else None
    return step_rule(rule.name, args, current, grad_at, lambda a, b: (a, b),
                     key_norm2=norm2, restart=restart)


def _inputs(objective, target, fresh, state, numeric, unit) -> dict:
    step = fresh()
    shown = {"hyper-parameters": unit.hparams, "W shape": list(unit.shape), "step": unit.step,
             "seed": unit.seed}
    if target in state or target == PARAM:
        shown[f"{target} (before)"] = step.lookup(target)
    used = [objective.loss] + list(rule_arguments(objective.rules[0]).values())
    for name in dict.fromkeys(n.id for e in used for n in names_in(e)):
        if name not in (target, "step") and name not in numeric:
            shown[name] = step.lookup(name)
    return shown
