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

from nldsl.language import ast
from nldsl.language.consteval import hparam_values
from nldsl.validation.values import ValueChecker, unknown_hparams
from nldsl.errors import NLDSLCompileError, NLDSLError, NLDSLValueError, Problem
from nldsl.optim.codegen import compile_plan
from nldsl.optim.interpret import initial_state, reference_step
from nldsl.optim.plan import foldable, lower

SCHEDULES = ("reference", "fused")


def _load(spec):
    """A `Spec`, or a name, path (str or os.PathLike) or text for `nldsl.load`; an optimizer."""
    from nldsl.spec import Spec, load
    spec = spec if isinstance(spec, Spec) else load(spec)
    if spec.kind != "optimizer":
        raise NLDSLError(f"{spec.name} is a module; nldsl.compile(spec, **hparams) compiles it")
    return spec


def _problem(source, node, message: str, expected: str, hint: str) -> Problem:
    span = node.span
    return Problem(message, span.line, span.col, span.end_line, span.end_col, expected, hint, source)


def check_hparams(decl: ast.SpecDecl, values: dict[str, Any], source=None,
                  checker: ValueChecker | None = None, changed: set[str] | None = None) -> None:
    """Unknown names, missing values, and values that break their declared type or range (or
    make a period, chunk or dim no positive integer) are user errors, all reported at once and
    anchored at the spec's declarations; a ValueError too, as torch raises for a bad lr.
    `checker` is the spec's ValueChecker when the caller keeps one, `changed` the names whose
    values changed since `values` were last found good (ValueChecker.problems)."""
    checker = checker or ValueChecker(decl, source)
    known = {h.name: h for h in decl.hparams}
    problems = unknown_hparams(decl, values, source)
    problems += checker.problems({k: v for k, v in values.items() if k in known}, changed)
    problems += [_problem(source, h, f"{decl.name} needs a value for {h.name}", f"{h.name}=<value>",
                          f"it has no default: pass {h.name}=...")
                 for h in decl.hparams if h.default is None and h.name not in values]
    if problems:
        raise NLDSLValueError(sorted(problems, key=lambda p: (p.line, p.col)))


def _same(a, b) -> bool:
    """Whether a group's value is the one last checked: the same object, or an equal number,
    string or tuple (a tensor lr is compared by identity: reading it would synchronise)."""
    if a is b:
        return True
    plain = (bool, int, float, str, tuple, list)
    return type(a) is type(b) and isinstance(a, plain) and a == b


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
        self._values, self._checked = ValueChecker(self.spec), {}
        check_hparams(decl, given, self.spec.source, self._values)
        defaults = hparam_values(decl, given)
        unknown = [h for h in decl.hparams if h.name not in defaults]
        if unknown:     # a default that is no constant (`lr = lr`, `a = b` with b unknown)
            raise NLDSLCompileError([_problem(self.spec.source, h, f"{decl.name}: the default of "
                                              f"{h.name} has no value", "a constant default",
                                              f"write a number, or pass {h.name}=...")
                                     for h in unknown])
        self._plans: dict = {}
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict) -> None:
        """torch's, then the group's own values checked against the spec: a bad lr in a group
        added later is refused here, the optimizer unchanged."""
        super().add_param_group(param_group)
        try:
            self._check_group(self.param_groups[-1])
        except NLDSLError:
            self.param_groups.pop()
            raise

    def _check_group(self, group: dict) -> None:
        """The group's values against the spec (a scheduler or the user may have changed them
        since): only what changed since they were last found good is checked again."""
        values = {h.name: group[h.name] for h in self.spec.decl.hparams
                  if h.name in group and group[h.name] is not None}
        seen = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        last = self._checked.get(id(group))
        changed = None
        if last is not None and last.keys() == seen.keys():
            changed = {k for k, v in seen.items() if not _same(v, last[k])}
            if not changed:
                return
        check_hparams(self.spec.decl, values, self.spec.source, self._values, changed)
        self._checked[id(group)] = seen     # lists copied: `group["betas"][1] = 2` is a change

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
            self._values, self._checked = ValueChecker(self.spec), {}

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
            self._check_group(group)
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
