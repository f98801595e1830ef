"""`nldsl.optimizer(spec, params, **hparams)`: a real `torch.optim.Optimizer` compiled from a spec.

Hyper-parameters are the spec's, with its defaults, per param group (so lr schedulers and
per-group settings work); a value of None means the default (PyTorch's Muon takes
`adjust_lr_fn=None`). Per-parameter state holds `step` and the spec's states by name, so
`state_dict()` / `load_state_dict()` resume a run exactly (and refuse another optimizer's or
other parameters' state). `schedule="reference"` interprets the
plan one tensor at a time; `schedule="fused"` runs generated multi-tensor code (`codegen.py`).
"""
from __future__ import annotations

from typing import Any

import torch

from nldsl import ast
from nldsl.consteval import hparam_values
from nldsl.errors import NLDSLCompileError, NLDSLError, Problem
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


def _zeros(plan_hparams, group: dict) -> frozenset:
    """The numeric hyper-parameters that are 0 in this group (plan.drop_zero_terms)."""
    return frozenset(h for h in plan_hparams if type(group.get(h)) in (int, float) and group[h] == 0)


class SpecOptimizer(torch.optim.Optimizer):
    """A torch optimizer whose update rule is derived from an nldsl spec.

    Pickling (`pickle`, `copy.deepcopy`, `torch.save`) keeps the spec's text and rebuilds the
    compiled steps on load; the plans themselves are a cache."""

    def __init__(self, params, spec, schedule: str | None = None, /, **hparams):
        """`schedule=` is the API's unless the spec declares a hyper-parameter `schedule`:
        then it is that hyper-parameter's, and the schedule is the third positional argument."""
        self.spec = _load(spec)
        decl = self.spec.decl
        if any(h.name == "params" for h in decl.hparams):   # torch's key for a group's tensors
            raise NLDSLError(f"{decl.name}: a hyper-parameter cannot be named `params`: "
                             "torch's param groups hold the tensors under that key; rename it")
        if "schedule" in hparams and all(h.name != "schedule" for h in decl.hparams):
            if schedule is not None:
                raise TypeError("schedule given twice (positionally and as schedule=)")
            schedule = hparams.pop("schedule")
        schedule = "fused" if schedule is None else schedule
        if schedule not in SCHEDULES:
            raise NLDSLError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        self.schedule = schedule
        given = {k: v for k, v in hparams.items() if v is not None}
        check_hparams(decl, given, self.spec.source)
        defaults = hparam_values(decl, given)
        unknown = [h for h in decl.hparams if h.name not in defaults]
        if unknown:     # a default that is no constant (`lr = lr`, `a = b` with b unknown)
            raise NLDSLCompileError([_problem(self.spec.source, h, f"{decl.name}: the default of "
                                              f"{h.name} has no value", "a constant default",
                                              f"write a number, or pass {h.name}=...")
                                     for h in unknown])
        super().__init__(params, defaults)
        self._plans: dict = {}

    def __getstate__(self):
        state = super().__getstate__()
        state["spec_text"], state["schedule"] = self.spec.text, self.schedule
        return state

    def __setstate__(self, state):
        """From a pickle (with the spec's text), or from torch's load_state_dict (without)."""
        from nldsl.spec import load
        text = state.pop("spec_text", None)
        super().__setstate__(state)
        if text is not None:
            self.spec, self._plans = load(text), {}

    @torch.compiler.disable   # lowering and code generation run eagerly under torch.compile
    def plan_for(self, group: dict):
        """The plan (and its compiled code) for this group's bool/str hyper-parameters and
        its numeric ones that are 0."""
        values = {h.name: group[h.name] for h in self.spec.decl.hparams if h.name in group}
        folded = foldable(self.spec.decl, values)
        zeros = _zeros([h for h in values if h not in folded], group)
        key = (tuple(sorted(folded.items())), zeros)
        if key not in self._plans:
            plan = lower(self.spec, folded, zeros)
            self._plans[key] = (plan, compile_plan(plan))
        return self._plans[key]

    def load_state_dict(self, state_dict) -> None:
        """torch's load, then a check that each parameter's state is this spec's, of its shape:
        a state_dict of another optimizer (torch's Adam: `exp_avg`) or of other parameters is a
        ValueError here, never a wrong step later."""
        before = self.state, self.param_groups
        super().load_state_dict(state_dict)
        try:
            for group in self.param_groups:
                plan, _ = self.plan_for(group)
                for p in group["params"]:
                    if self.state[p]:
                        _check_state(plan, p, self.state[p])
        except ValueError:
            self.state, self.param_groups = before     # a refused state_dict changes nothing
            raise

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
                if p.grad.is_sparse:
                    raise TypeError(f"{self.spec.name} does not support sparse gradients")
                if not self.state[p]:
                    _check_param(self.spec.name, p)
                    self.state[p].update(initial_state(plan, p, hparams))
                states.append(self.state[p])
            if self.schedule == "reference":
                reference_step(plan, params, states, hparams)
            else:
                compiled(params, states, hparams)
        return loss


def _check_param(name: str, p: torch.Tensor) -> None:
    """Complex parameters are refused: the specs' math (sqrt, sign, products) is written for
    real numbers, and torch treats a complex tensor as pairs of reals (view_as_real)."""
    if p.is_complex():
        raise TypeError(f"{name} does not support complex parameters (got {p.dtype}); "
                        "optimize torch.view_as_real(param) instead")
    if p.is_sparse:
        raise TypeError(f"{name} does not support sparse parameters")


def _check_state(plan, p: torch.Tensor, state: dict) -> None:
    missing = [s for s, sp in plan.states.items() if s != "W" and sp.persistent and
               not isinstance(sp.shape, ast.MLPShape) and s not in state]
    if missing or not isinstance(state.get("step"), int):
        raise ValueError(f"state_dict is not from nldsl optimizer {plan.name!r}: a parameter's "
                         f"state has keys {sorted(state)}, expected 'step' (an int) and "
                         f"{missing or sorted(plan.states.keys() - {'W'})}")
    for key, value in state.items():
        if torch.is_tensor(value) and key in plan.states and isinstance(
                plan.states[key].shape, ast.LikeShape) and value.shape != p.shape:
            raise ValueError(f"state_dict does not fit: state {key!r} has shape "
                             f"{tuple(value.shape)}, its parameter {tuple(p.shape)}")


def optimizer(spec, params, schedule: str | None = None, /, **hparams) -> SpecOptimizer:
    """Compile an optimizer spec (a name, a path, spec text or a `Spec`) for `params`.
    `spec` and `params` are positional-only, so a hyper-parameter may be named `spec`
    (not `params`: torch's param groups use that key); `schedule=` selects the schedule unless the spec has a hyper-parameter of that
    name (then pass the schedule as the third argument).

        opt = nldsl.optimizer("adam", model.parameters(), lr=3e-4, betas=(0.9, 0.95))
    """
    return SpecOptimizer(params, spec, schedule, **hparams)
