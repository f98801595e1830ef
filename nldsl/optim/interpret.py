"""The `reference` schedule: run a Plan on one tensor for one step, expression by expression.

Per parameter and step: count the step, then run the levels in update order. A level of period
N > 1 adds each step's change of its objective-trained states to an accumulator and writes their
sum every N steps (frequency semantics, docs/optimizers.md); its reads are cached between writes.
A period that is not the literal 1 (`every k steps`) makes a level slower even where k is 1, as
in the plan (`accumulate`) and in generated code (`snapshot.period_one`): the same program.
Contexts and `before write` reads are computed before the step's first write; a level's
other reads right after its writes.
"""
from __future__ import annotations

import torch
from torch.func import grad as func_grad

from nldsl.language import ast
from nldsl.lower import timing
from nldsl.optim import kernels
from nldsl.errors import NLDSLError
from nldsl.optim.evaluate import FAILURES, TensorEvaluator
from nldsl.optim.ir import Plan, Write
from nldsl.optim.plan import PARAM
from nldsl.optim.snapshot import dependency_order, period_one


def initial_state(plan: Plan, param: torch.Tensor, hparams: dict) -> dict:
    """Fresh per-parameter state: step 0, every persistent state at its initial value."""
    state: dict = {"step": 0}
    env = TensorEvaluator(lambda name: {PARAM: param, f"grad({PARAM})": param.grad, **hparams,
                                        **state}[name],
                          plan.source, f"for a parameter of shape {tuple(param.shape)}")
    inits = {s.name: s.init if s.init is not None else ast.Number(value=0)
             for s in plan.states.values() if s.name != PARAM and s.persistent}
    for name, _ in dependency_order(inits):   # an initial value may be another state's (no cycle)
        s = plan.states[name]
        if isinstance(s.shape, ast.MLPShape):
            widths = [int(env(w)) for w in s.shape.widths]
            acts = [o for o in s.shape.options if o in kernels.ACTIVATIONS] or ["gelu"]
            mlp = kernels.mlp_init(widths, acts[0], "residual" in s.shape.options, param)
            state.update({f"{s.name}.{i}": w for i, w in enumerate(mlp)})
            continue
        value = env(s.init) if s.init is not None else 0
        state[s.name] = torch.zeros_like(param, memory_format=torch.preserve_format).add_(value)
    return state


class Step:
    """Names visible to one parameter's step: hyper-parameters, W, grad(W), states, contexts."""

    def __init__(self, plan: Plan, param, state: dict, hparams: dict):
        self.plan, self.param, self.state, self.hparams = plan, param, state, hparams
        self.values: dict = {}
        self.evaluate = TensorEvaluator(self.lookup, plan.source,
                                        f"for a parameter of shape {tuple(param.shape)}")

    def lookup(self, name: str):
        if name in self.values:
            return self.values[name]
        if name == PARAM:
            return self.param
        if name == f"grad({PARAM})":
            return self.param.grad
        if name == "step":
            return self.state["step"]
        if name in self.hparams:
            return self.hparams[name]
        if name in self.state:
            return self.state[name]
        if f"{name}.0" in self.state:
            return self.memory(name)
        level = self.plan.level_of(name)
        if level is None:
            raise KeyError(f"{self.plan.name}: no value for {name!r}")
        if name in level.contexts:
            value = self.evaluate(level.contexts[name])
        else:
            value = self.read(level, name)
        self.values[name] = value
        return value

    def memory(self, name: str) -> kernels.MLP:
        shape = self.plan.states[name].shape
        acts = [o for o in shape.options if o in kernels.ACTIVATIONS] or ["gelu"]
        weights, i = [], 0
        while f"{name}.{i}" in self.state:
            weights.append(self.state[f"{name}.{i}"])
            i += 1
        return kernels.MLP(weights, acts[0], "residual" in shape.options)

    def read(self, level, name: str):
        value, _ = level.reads[name]
        if period_one(level):
            return self.evaluate(value)
        key = f"read.{name}"
        if key not in self.state:
            self.state[key] = self.owned(self.evaluate(value))
        return self.state[key]

    def period(self, level) -> int:
        return timing.period(self.evaluate(level.period))

    def snapshot(self) -> None:
        """Contexts and `before write` reads, computed before any write of the step
        (docs/language.md, ordering within a unit), in dependency order (so a chain of `let`s
        that refer forward is evaluated iteratively, never by a recursion as deep as the chain).
        W is written in place, so a context that is W itself, or a view of it, is copied."""
        before = {n: v for lv in self.plan.levels if period_one(lv)
                  for n, (v, first) in lv.reads.items() if first}
        items = {n: v for lv in self.plan.levels for n, v in lv.contexts.items()} | before
        for name, value in dependency_order(items):
            if name in before:
                self.values[name] = self.owned(self.evaluate(value))
            else:
                self.values[name] = self.owned(self.lookup(name))

    def run(self) -> None:
        self.state["step"] += 1
        self.snapshot()
        for level in self.plan.levels:
            every = period_one(level)
            writing = every or timing.writes_at(self.period(level), self.state["step"])
            for write in level.writes:
                if write.accumulate:
                    self.accumulate(write, writing)
                elif writing:
                    self.assign(write.target, self.compute(write))
            if every:
                for name, (value, before_write) in level.reads.items():
                    if not before_write:
                        self.values[name] = self.owned(self.evaluate(value))
            elif writing:
                for name, (value, _) in level.reads.items():
                    self.state[f"read.{name}"] = self.owned(self.evaluate(value))

    def owned(self, value):
        """value, copied when it shares W's storage (`c <- W`, `read r = W`): W is written in
        place, and a state or read keeps the value it was given."""
        if torch.is_tensor(value) and _shares_storage(value, self.param):
            return value.clone()
        return value

    def accumulate(self, write: Write, writing: bool) -> None:
        key = f"acc.{write.target}"
        current = self.lookup(write.target)
        change = self.compute(write) - current
        total = self.state[key] + change if key in self.state else change
        if writing:
            self.assign(write.target, current + total)
            self.state.pop(key, None)
        else:
            self.state[key] = total

    def compute(self, write: Write):
        """The write's new value; a failure inside derived arithmetic (no span of its own) is
        located at the objective or update it comes from."""
        try:
            return self._compute(write)
        except FAILURES as error:
            if isinstance(error, NLDSLError) or write.origin is None:
                raise
            raise self.evaluate.failure(write.origin, error) from error

    def _compute(self, write: Write):
        if write.autograd is not None:
            return self.autograd_step(write)
        if write.restart is None:
            return self.evaluate(write.value)
        self.values[write.target] = self.evaluate(write.restart)
        for _ in range(int(self.evaluate(write.repeat))):
            self.values[write.target] = self.evaluate(write.value)
        return self.values.pop(write.target)

    def autograd_step(self, write: Write):
        """S <- decay S - lr grad_S loss(S), the gradient by torch.func (any objective); the
        gradient itself when lr is None (of `step.state`, which a rule chain transforms)."""
        step = write.autograd
        wrt = step.state or write.target
        current = self.lookup(wrt)

        def loss(value):
            self.values[wrt] = current.like(value) if isinstance(current, kernels.MLP) else value
            try:
                return self.evaluate(step.loss)
            finally:
                del self.values[wrt]

        primal = tuple(current) if isinstance(current, kernels.MLP) else current
        with torch.enable_grad():
            gradient = func_grad(loss)(primal)
        if step.lr is None:
            return gradient
        lr, decay = self.evaluate(step.lr), self.evaluate(step.decay)
        if isinstance(current, kernels.MLP):
            return current.like([decay * w - lr * g for w, g in zip(current, gradient)])
        return decay * current - lr * gradient

    def assign(self, target: str, value) -> None:
        value = self.owned(value)
        if target == PARAM:
            self.param.copy_(value)
        elif isinstance(value, kernels.MLP):
            self.state.update({f"{target}.{i}": w for i, w in enumerate(value)})
        elif self.plan.states[target].persistent:
            self.state[target] = value
        else:
            self.values[target] = value


def _shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def reference_step(plan: Plan, params: list, states: list[dict], hparams: dict) -> None:
    """One optimizer step of every parameter, one at a time."""
    for param, state in zip(params, states):
        Step(plan, param, state, hparams).run()


def locate_failure(plan: Plan, params: list, states: list[dict], hparams: dict) -> None:
    """Rerun the step on copies in the reference schedule, which raises a located error at the
    spec expression that cannot be computed (fused code calls this when its step fails, so a
    failure reads the same in both schedules); returns when the copies step without one."""
    for param, state in zip(params, states):
        copy = param.detach().clone()
        copy.grad = param.grad.detach().clone()
        Step(plan, copy, {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()},
             hparams).run()
