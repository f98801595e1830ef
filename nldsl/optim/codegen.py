"""Plan -> readable Python source -> a step function (the `fused` schedule).

Four shapes of program, chosen from the plan, never from the spec's name:
  * `fused kernel`: the plan unifies with the plan of the Adam template (patterns.py) -> one call
    to torch's fused Adam/AdamW kernel;
  * `foreach`: every expression is elementwise -> torch `_foreach_*` ops over the tensors of a
    param group that share a step count (slower levels included);
  * `foreach by shape`: the same, grouped by shape too, when the plan reads a shape or calls
    `newton_schulz` (one Newton-Schulz per group of equal-shape matrices);
  * `loop`: per-tensor code (autograd steps, MLP memories, matrix products, cubic restarts).
The source is compiled under a `<nldsl:NAME>` filename registered with `linecache`, so
tracebacks and `inspect.getsource` show it. It is generated from the plan (validated names only).
"""
from __future__ import annotations

import itertools
import keyword
import linecache
import math

import torch
import torch.nn.functional as F

from nldsl import ast
from nldsl.consteval import calls_in
from nldsl.errors import NLDSLError
from nldsl.optim import kernels as K
from nldsl.optim.derive import mentions
from nldsl.optim.ir import Plan, Write
from nldsl.optim.patterns import match_adam
from nldsl.optim.plan import PARAM
from nldsl.optim.printer import SHAPED, NotVectorizable, Printer
from nldsl.optim.snapshot import period_one, snapshot_lines

RESERVED = {"torch", "F", "K", "math", "grad", "grads", "state", "states", "hp", "step", "params",
            "step_group", "step_tensor", "total", "change"}
_counter = itertools.count()


def _check_names(plan: Plan) -> None:
    names = set(plan.states) | set(plan.hparams) | {n for lv in plan.levels for n in
                                                      list(lv.contexts) + list(lv.reads)}
    bad = sorted(n for n in names - {PARAM} if n in RESERVED or keyword.iskeyword(n))
    if bad:
        raise NLDSLError(f"{plan.name}: rename {', '.join(bad)}: reserved in generated code")


def _tensor_names(plan: Plan) -> set[str]:
    """W, grad, the states, and the contexts and reads whose value is a tensor (not a number)."""
    names = {PARAM, "grad"} | set(plan.states)
    probe = Printer(names, foreach=False)
    for level in plan.levels:
        for name, value in list(level.contexts.items()) + [(n, v) for n, (v, _) in level.reads.items()]:
            if probe.expr(value)[1]:
                names.add(name)
    return names


def _header(plan: Plan, mode: str) -> list[str]:
    lines = [f"# nldsl optimizer {plan.name!r}, schedule fused ({mode}), generated from its plan"]
    if plan.folded:
        lines.append("# folded: " + ", ".join(f"{k} = {v!r}" for k, v in plan.folded.items()))
    return lines


def _hparam_lines(plan: Plan) -> list[str]:
    return [f"    {h} = hp[{h!r}]" for h in plan.hparams]


def generate_foreach(plan: Plan) -> str:
    """Source of `step_group(params, grads, states, hp, step)` over lists of tensors that share
    their step count, so every level writes on the same steps. When the plan reads a shape or
    orthogonalises (`by_shape`), the lists also share one shape, dtype and device: a shape value
    is the first tensor's and Newton-Schulz runs once per group (`K.newton_schulz_group`)."""
    if any(w.autograd or w.restart for lv in plan.levels for w in lv.writes) or any(
            isinstance(s.shape, ast.MLPShape) for s in plan.states.values()):
        raise NotVectorizable("plan")
    p = Printer(_tensor_names(plan), foreach=True, by_shape=by_shape(plan))
    body = _header(plan, _foreach_mode(plan)) + ["def step_group(params, grads, states, hp, step):"]
    body += ["    W = params", "    grad = grads"] + _hparam_lines(plan)
    body += [f"    {s} = [st[{s!r}] for st in states]" for s, sp in plan.states.items()
             if s != PARAM and sp.persistent]
    for level in plan.levels:
        for name, (value, _) in level.reads.items():
            if not period_one(level):
                key = "read." + name
                body += [f"    if any({key!r} not in st for st in states):  # first step",
                         f"        for st, x in zip(states, {p.expr(value)[0]}):",
                         f"            st.setdefault({key!r}, x)",
                         f"    {name} = [st[{key!r}] for st in states]"]
    body += snapshot_lines(plan, p, foreach=True)

    def hold(name: str, value: str) -> list[str]:
        return [f"        for st, x in zip(states, {value}):", f"            st[{('read.' + name)!r}] = x"]

    body += _level_lines(plan, p, _foreach_write, hold)
    return "\n".join(body) + "\n"


def _level_lines(plan: Plan, p: Printer, write_lines, hold_lines) -> list[str]:
    """Each level in update order: its writes (`write_lines`), then its reads: computed at once
    for an every-step level, stored by `hold_lines` at the writes of a slower one."""
    body = []
    for level in plan.levels:
        period = p.expr(level.period)[0]
        body.append(f"    # level {level.name}, every {period} step(s)")
        if not period_one(level):
            body.append(f"    writing = step % int({period}) == 0")
        for write in level.writes:
            body += write_lines(plan, p, level, write)
        if period_one(level):
            body += [f"    {n} = {p.expr(v)[0]}" for n, (v, before) in level.reads.items() if not before]
        elif level.reads:
            body.append("    if writing:")
            for name, (value, _) in level.reads.items():
                body += hold_lines(name, p.expr(value)[0])
    return body


def by_shape(plan: Plan) -> bool:
    """Does the plan's code depend on a tensor's shape (size, ndim) or stack it (newton_schulz)?"""
    exprs = [w.value for lv in plan.levels for w in lv.writes] + [
        v for lv in plan.levels for v in list(lv.contexts.values()) + [r for r, _ in lv.reads.values()]]
    return any(c.func in SHAPED for e in exprs if e is not None for c in calls_in(e))


def _foreach_mode(plan: Plan) -> str:
    return "foreach by shape" if by_shape(plan) else "foreach"


#: foreach ops with an in-place form: `target = op(target, ...)` becomes `op_(target, ...)`.
_IN_PLACE = ("add", "sub", "mul", "div", "lerp", "addcdiv", "addcmul")


def _store(target: str, value: str) -> str:
    """Write `value` into the tensors of `target`: in place when it is an op on target itself."""
    for op in _IN_PLACE:
        head = f"torch._foreach_{op}({target}, "
        if value.startswith(head):
            return f"torch._foreach_{op}_({target}, {value[len(head):]}"
    return f"torch._foreach_copy_({target}, {value})"


def _store_lines(p: Printer, target: str, value: ast.Expr) -> list[str]:
    """`target * c +- rest` (rest free of target) as two in-place ops, scaling then adding,
    the order of torch's decoupled weight decay; anything else through `_store`."""
    t = ast.Name(id=target)
    left = value.left if isinstance(value, ast.Binary) and value.op in "+-" else None
    if isinstance(left, ast.Binary) and left.op == "*" and not mentions(value.right, target):
        factor = left.right if left.left == t else left.left if left.right == t else None
        if factor is not None and p.expr(factor)[1] is False:
            rest = ast.Binary(op=value.op, left=t, right=value.right)
            return [f"torch._foreach_mul_({target}, {p.expr(factor)[0]})", _store(target, p.expr(rest)[0])]
    return [_store(target, p.expr(value)[0])]


def _foreach_write(plan: Plan, p: Printer, level, write: Write) -> list[str]:
    t, value, note = write.target, p.expr(write.value)[0], f"  # {write.derivation}"
    if write.accumulate:
        key = "acc." + t
        return [f"    change = torch._foreach_sub({value}, {t}){note}",
                f"    total = [st[{key!r}] + c if {key!r} in st else c for st, c in zip(states, change)]",
                "    if writing:", f"        torch._foreach_add_({t}, total)",
                "        for st in states:", f"            st.pop({key!r}, None)",
                "    else:", "        for st, c in zip(states, total):", f"            st[{key!r}] = c"]
    indent = "    " if period_one(level) else "        "
    guard = [] if period_one(level) else ["    if writing:"]
    if t == PARAM or plan.states[t].persistent:
        lines = _store_lines(p, t, write.value)
        return guard + [indent + line for line in lines[:-1]] + [f"{indent}{lines[-1]}{note}"]
    return guard + [f"{indent}{t} = {value}{note}"]


def generate_loop(plan: Plan) -> str:
    """Source of `step_tensor(W, state, hp, step)` for one tensor."""
    p = Printer(_tensor_names(plan), foreach=False)
    body = _header(plan, "loop") + ["def step_tensor(W, state, hp, step):", "    grad = W.grad"]
    body += _hparam_lines(plan)
    for s, sp in plan.states.items():
        if s == PARAM or not sp.persistent:
            continue
        if isinstance(sp.shape, ast.MLPShape):
            acts = [o for o in sp.shape.options if o in K.ACTIVATIONS] or ["gelu"]
            body.append(f"    {s} = K.load_mlp(state, {s!r}, {acts[0]!r}, {'residual' in sp.shape.options})")
        else:
            body.append(f"    {s} = state[{s!r}]")
    for level in plan.levels:
        for name, (value, _) in level.reads.items():
            if not period_one(level):
                body.append(f"    {name} = state.get({('read.' + name)!r})")
                body.append(f"    if {name} is None:")
                body.append(f"        {name} = state[{('read.' + name)!r}] = {p.expr(value)[0]}")
    body += snapshot_lines(plan, p, foreach=False)
    body += _level_lines(plan, p, _loop_write,
                         lambda name, value: [f"        state[{('read.' + name)!r}] = {value}"])
    return "\n".join(body) + "\n"


def _loop_write(plan: Plan, p: Printer, level, write: Write) -> list[str]:
    t = write.target
    if write.autograd is not None:
        step = write.autograd
        value = (f"K.autograd_step(lambda {t}: {p.expr(step.loss)[0]}, {t}, "
                 f"{p.expr(step.lr)[0]}, {p.expr(step.decay)[0]})")
    else:
        value = p.expr(write.value)[0]
    lines = []
    if write.restart is not None:
        lines += [f"    {t} = {p.expr(write.restart)[0]}",
                  f"    for _ in range(int({p.expr(write.repeat)[0]})):"]
        lines.append(f"        {t} = {value}  # {write.derivation}")
        value = t
    if write.accumulate:
        key = "acc." + t
        return lines + [f"    change = {value} - {t}  # {write.derivation}",
                        f"    total = change if {key!r} not in state else state[{key!r}] + change",
                        "    if writing:", f"        {t} = {t} + total",
                        f"        state[{t!r}] = {t}", f"        state.pop({key!r}, None)",
                        "    else:", f"        state[{key!r}] = total"]
    guard = "" if period_one(level) else "    if writing:\n    "
    if t == PARAM:
        return lines + [f"{guard}    W.copy_({value})  # {write.derivation}"]
    sp = plan.states[t]
    if isinstance(sp.shape, ast.MLPShape):
        return lines + [f"{guard}    {t} = {value}  # {write.derivation}",
                        f"{guard}    K.store_mlp(state, {t!r}, {t})"]
    store = f"; state[{t!r}] = {t}" if sp.persistent else ""
    return lines + [f"{guard}    {t} = {value}{store}  # {write.derivation}"]


def generate(plan: Plan) -> tuple[str, str]:
    """(mode, source) for the fastest program shape the plan allows."""
    _check_names(plan)
    adam = match_adam(plan)
    if adam is not None:
        return "fused kernel", adam
    try:
        return _foreach_mode(plan), generate_foreach(plan)
    except NotVectorizable:
        return "loop", generate_loop(plan)


def _compile(source: str, name: str) -> dict:
    filename = f"<nldsl:{name}:{next(_counter)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"torch": torch, "F": F, "K": K, "math": math}
    exec(compile(source, filename, "exec"), namespace)  # source generated from the plan
    return namespace


def compile_plan(plan: Plan):
    """A callable (params, states, hparams) running one step of every tensor; `.source` holds
    the generated code and `.mode` its shape."""
    mode, source = generate(plan)
    namespace = _compile(source, plan.name)
    shaped = mode == "foreach by shape"

    def run(params, states, hparams):
        for state in states:
            state["step"] += 1
        if mode == "loop":
            for param, state in zip(params, states):
                namespace["step_tensor"](param, state, hparams, state["step"])
            return
        buckets: dict[tuple, list[int]] = {}
        for i, (param, state) in enumerate(zip(params, states)):
            key = (state["step"], param.shape, param.dtype, param.device) if shaped else (state["step"],)
            buckets.setdefault(key, []).append(i)
        for key, index in buckets.items():
            namespace["step_group"]([params[i] for i in index], [params[i].grad for i in index],
                                    [states[i] for i in index], hparams, key[0])

    run.source, run.mode = source, mode
    return run
