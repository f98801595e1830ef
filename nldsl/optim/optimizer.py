"""`nldsl.optimizer(spec, params, **hparams)`: a real `torch.optim.Optimizer` compiled from a spec.

Hyper-parameters are the spec's, with its defaults, per param group (so lr schedulers and
per-group settings work); a value of None means the default (PyTorch's Muon takes
`adjust_lr_fn=None`). Per-parameter state holds `step` and the spec's states by name, so
`state_dict()` / `load_state_dict()` resume a run exactly. `schedule="reference"` interprets the
plan one tensor at a time; `schedule="fused"` runs generated multi-tensor code (`codegen.py`).
"""
from __future__ import annotations

from typing import Any

import torch

from nldsl import ast
from nldsl.consteval import hparam_values
from nldsl.errors import NLDSLError, Problem
from nldsl.optim.codegen import compile_plan
from nldsl.optim.interpret import initial_state, reference_step
from nldsl.optim.plan import foldable, lower

SCHEDULES = ("reference", "fused")


def _load(spec):
    if isinstance(spec, str):
        from nldsl.spec import load
        return load(spec)
    return spec


def _problem(source, node, message: str, expected: str, hint: str) -> Problem:
    span = node.span
    return Problem(message, span.line, span.col, span.end_line, span.end_col, expected, hint, source)


def check_hparams(decl: ast.SpecDecl, values: dict[str, Any], source=None) -> None:
    """Unknown names, values outside a `{...}` choice and missing values are user errors,
    anchored at the spec's declaration of its hyper-parameters."""
    known = {h.name: h for h in decl.hparams}
    problems = []
    for name, value in values.items():
        if name not in known:
            problems.append(_problem(source, decl, f"{decl.name} has no hyper-parameter {name!r}",
                                     ", ".join(known), f"pass one of the names in `{decl.name}(...)`"))
            continue
        for constraint in known[name].constraints:
            if isinstance(constraint, ast.Choice):
                options = [getattr(o, "value", None) for o in constraint.options]
                if value not in options:
                    problems.append(_problem(source, constraint, f"{decl.name}: {name} = {value!r} "
                                             f"is not one of {options}", " or ".join(map(repr, options)),
                                             f"pass {name}= one of the choices"))
    for h in decl.hparams:
        if h.default is None and h.name not in values:
            problems.append(_problem(source, h, f"{decl.name} needs a value for {h.name}",
                                     f"{h.name}=<value>", f"it has no default: pass {h.name}=..."))
    if problems:
        raise NLDSLError(problems)


class SpecOptimizer(torch.optim.Optimizer):
    """A torch optimizer whose update rule is derived from an nldsl spec."""

    def __init__(self, params, spec, schedule: str = "fused", **hparams):
        if schedule not in SCHEDULES:
            raise NLDSLError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.spec, self.schedule = _load(spec), schedule
        decl = self.spec.decl
        given = {k: v for k, v in hparams.items() if v is not None}
        check_hparams(decl, given, self.spec.source)
        defaults = hparam_values(decl, given)
        super().__init__(params, defaults)
        self._plans: dict = {}

    def plan_for(self, group: dict):
        """The plan (and its compiled code) for this group's bool/str hyper-parameters."""
        values = {h.name: group[h.name] for h in self.spec.decl.hparams if h.name in group}
        folded = foldable(self.spec.decl, values)
        key = tuple(sorted(folded.items()))
        if key not in self._plans:
            plan = lower(self.spec, folded)
            self._plans[key] = (plan, compile_plan(plan))
        return self._plans[key]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            check_hparams(self.spec.decl, {h.name: group[h.name] for h in self.spec.decl.hparams
                                           if h.name in group and group[h.name] is not None},
                          self.spec.source)
            plan, compiled = self.plan_for(group)
            hparams = {name: group[name] for name in plan.hparams}
            params = [p for p in group["params"] if p.grad is not None]
            states = []
            for p in params:
                if not self.state[p]:
                    self.state[p].update(initial_state(plan, p, hparams))
                states.append(self.state[p])
            if self.schedule == "reference":
                reference_step(plan, params, states, hparams)
            else:
                compiled(params, states, hparams)
        return loss


def optimizer(spec, params, schedule: str = "fused", **hparams) -> SpecOptimizer:
    """Compile an optimizer spec (a name, a path, spec text or a `Spec`) for `params`.

        opt = nldsl.optimizer("adam", model.parameters(), lr=3e-4, betas=(0.9, 0.95))
    """
    return SpecOptimizer(params, spec, schedule=schedule, **hparams)
