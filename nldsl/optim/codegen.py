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
import linecache
import math

import torch
import torch.nn.functional as F

from nldsl import ast
from nldsl.consteval import calls_in
from nldsl.errors import NLDSLCompileError, NLDSLError
from nldsl.lower.timing import writes_at
from nldsl.optim import kernels as K
from nldsl.optim.derive import mentions
from nldsl.optim.evaluate import FAILURES
from nldsl.optim.interpret import locate_failure
from nldsl.optim.ir import Plan, Write
from nldsl.optim.patterns import match_adam
from nldsl.optim.plan import PARAM
from nldsl.optim.printer import SHAPED, NotVectorizable, Printer, literal, user
from nldsl.optim.snapshot import copied, dependency_order, period_one, snapshot_lines

_counter = itertools.count()


def _tensor_names(plan: Plan) -> set[str]:
    """W, grad, the states, and the contexts and reads whose value is a tensor (not a number),
    probed in dependency order so a `let` that reads a later `let` sees whether it is one."""
    names = {PARAM, "grad"} | set(plan.states)
    probe = Printer(names, foreach=False)
    items = {n: v for lv in plan.levels for n, v in lv.contexts.items()}
    items |= {n: v for lv in plan.levels for n, (v, _) in lv.reads.items()}
    for name, value in dependency_order(items):
        if probe.expr(value)[1]:
            names.add(name)
    return names


def _header(plan: Plan, mode: str) -> list[str]:
    lines = [f"# nldsl optimizer {literal(plan.name)}, schedule fused ({mode}), generated from its plan"]
    if plan.folded:
        lines.append("# folded: " + ", ".join(f"{k} = {literal(v)}" for k, v in plan.folded.items()))
    return lines


def _hparam_lines(plan: Plan) -> list[str]:
    return ["    u_step = step"] + [f"    {user(h)} = hp[{literal(h)}]" for h in plan.hparams]


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
    body += [f"    {user(PARAM)} = params", "    grad = grads"] + _hparam_lines(plan)
    body += [f"    {user(s)} = [st[{literal(s)}] for st in states]" for s, sp in plan.states.items()
             if s != PARAM and sp.persistent]
    body += snapshot_lines(plan, p, foreach=True)

    def hold(name: str, value: ast.Expr) -> list[str]:
        return p.emit("        ", f"for st, x in zip(states, {copied(plan, value, p.expr(value)[0], True)}):") + [
            f"            st[{literal('read.' + name)}] = x"]

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
            body += p.emit("    ", f"writing = writes_at({period}, step)")
        for write in level.writes:
            body += write_lines(plan, p, level, write)
        if period_one(level):
            for name, (value, before) in level.reads.items():
                if not before:
                    source = copied(plan, value, p.expr(value)[0], p.foreach)
                    body += p.emit("    ", f"{user(name)} = {source}")
        elif level.reads:
            body.append("    if writing:")
            for name, (value, _) in level.reads.items():
                body += hold_lines(name, value)
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


def _store_lines(p: Printer, indent: str, target: str, value: ast.Expr, note: str) -> list[str]:
    """`target * c +- rest` (rest free of target) as two in-place ops, scaling then adding,
    the order of torch's decoupled weight decay; anything else through `_store`."""
    t, name = ast.Name(id=target), user(target)
    left = value.left if isinstance(value, ast.Binary) and value.op in "+-" else None
    if isinstance(left, ast.Binary) and left.op == "*" and not mentions(value.right, target):
        factor = left.right if left.left == t else left.left if left.right == t else None
        if factor is not None and p.expr(factor)[1] is False:
            rest = ast.Binary(op=value.op, left=t, right=value.right)
            lines = p.emit(indent, f"torch._foreach_mul_({name}, {p.expr(factor)[0]})")
            return lines + p.emit(indent, _store(name, p.expr(rest)[0]) + note)
    return p.emit(indent, _store(name, p.expr(value)[0]) + note)


def _foreach_write(plan: Plan, p: Printer, level, write: Write) -> list[str]:
    t, note = user(write.target), f"  # {write.derivation}"
    if write.accumulate:
        key = literal("acc." + write.target)
        return p.emit("    ", f"change = torch._foreach_sub({p.expr(write.value)[0]}, {t}){note}") + [
            f"    total = [st[{key}] + c if {key} in st else c for st, c in zip(states, change)]",
            "    if writing:", f"        torch._foreach_add_({t}, total)",
            "        for st in states:", f"            st.pop({key}, None)",
            "    else:", "        for st, c in zip(states, total):", f"            st[{key}] = c"]
    indent = "    " if period_one(level) else "        "
    guard = [] if period_one(level) else ["    if writing:"]
    if write.target == PARAM or plan.states[write.target].persistent:
        return guard + _store_lines(p, indent, write.target, write.value, note)
    return guard + p.emit(indent, f"{t} = {p.expr(write.value)[0]}{note}")


def generate_loop(plan: Plan) -> str:
    """Source of `step_tensor(W, state, hp, step)` for one tensor."""
    p = Printer(_tensor_names(plan), foreach=False)
    w = user(PARAM)
    body = _header(plan, "loop") + [f"def step_tensor({w}, state, hp, step):", f"    grad = {w}.grad"]
    body += _hparam_lines(plan)
    for s, sp in plan.states.items():
        if s == PARAM or not sp.persistent:
            continue
        if isinstance(sp.shape, ast.MLPShape):
            acts = [o for o in sp.shape.options if o in K.ACTIVATIONS] or ["gelu"]
            body.append(f"    {user(s)} = K.load_mlp(state, {literal(s)}, {literal(acts[0])}, "
                        f"{literal('residual' in sp.shape.options)})")
        else:
            body.append(f"    {user(s)} = state[{literal(s)}]")
    body += snapshot_lines(plan, p, foreach=False)
    body += _level_lines(plan, p, _loop_write, lambda name, value: p.emit(
        "        ", f"state[{literal('read.' + name)}] = {copied(plan, value, p.expr(value)[0], False)}"))
    return "\n".join(body) + "\n"


def _loop_write(plan: Plan, p: Printer, level, write: Write) -> list[str]:
    t, key, note = user(write.target), literal(write.target), f"  # {write.derivation}"
    indent = "    " if period_one(level) or write.accumulate else "        "
    lines = [] if period_one(level) or write.accumulate else ["    if writing:"]
    if write.restart is not None:
        lines += p.emit(indent, f"{t} = {p.expr(write.restart)[0]}")
        lines += p.emit(indent, f"for _ in range(int({p.expr(write.repeat)[0]})):")
        lines += p.emit(indent + "    ", f"{t} = {p.expr(write.value)[0]}{note}")
        value = t
    elif write.autograd is not None:
        step = write.autograd
        wrt = user(step.state or write.target)
        loss = p.inline(step.loss)[0]     # a lambda's body: nothing hoisted out of it
        value = f"K.gradient(lambda {wrt}: {loss}, {wrt})" if step.lr is None else \
            f"K.autograd_step(lambda {wrt}: {loss}, {wrt}, {p.expr(step.lr)[0]}, {p.expr(step.decay)[0]})"
    else:
        value = copied(plan, write.value, p.expr(write.value)[0], foreach=False)
    if write.accumulate:
        acc = literal("acc." + write.target)
        return lines + p.emit("    ", f"change = {value} - {t}{note}") + [
            f"    total = change if {acc} not in state else state[{acc}] + change",
            "    if writing:", f"        {t} = {t} + total",
            f"        state[{key}] = {t}", f"        state.pop({acc}, None)",
            "    else:", f"        state[{acc}] = total"]
    if write.target == PARAM:
        return lines + p.emit(indent, f"{t}.copy_({value}){note}")
    sp = plan.states[write.target]
    if isinstance(sp.shape, ast.MLPShape):
        return lines + p.emit(indent, f"{t} = {value}{note}") + [f"{indent}K.store_mlp(state, {key}, {t})"]
    store = f"; state[{key}] = {t}" if sp.persistent else ""
    return lines + p.emit(indent, f"{t} = {value}{store}{note}")


def generate(plan: Plan) -> tuple[str, str]:
    """(mode, source) for the fastest program shape the plan allows."""
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
    namespace = {"torch": torch, "F": F, "K": K, "math": math, "writes_at": writes_at}
    try:
        code = compile(source, filename, "exec")
    except (SyntaxError, RecursionError, MemoryError) as error:   # e.g. nesting beyond Python's
        raise NLDSLCompileError(f"{name}: the generated step does not compile ({error})") from None
    exec(code, namespace)  # source generated from the plan: nldsl's own text and grammar names
    return namespace


def _kernel_applies(params, grads, states, moments) -> bool:
    """torch's fused Adam kernel walks memory in order: it is exact only when a parameter, its
    gradient and its moments are laid out alike (contiguous), and it is not traceable by
    torch.compile; elsewhere the plan's foreach code computes the step."""
    if torch.compiler.is_compiling():
        return False
    return all(t.is_contiguous() for t in params) and all(t.is_contiguous() for t in grads) and all(
        st[m].is_contiguous() for st in states for m in moments)


def compile_plan(plan: Plan):
    """A callable (params, states, hparams) running one step of every tensor; `.source` holds
    the generated code and `.mode` its shape."""
    mode, source = generate(plan)
    namespace = _compile(source, plan.name)
    shaped = mode == "foreach by shape"
    if mode == "fused kernel":
        fallback = _compile(generate_foreach(plan), plan.name)["step_group"]
        moments = [w.target for w in plan.levels[0].writes]

    def run(params, states, hparams):
        try:
            step(params, states, hparams)
        except FAILURES as error:           # values the spec's expressions cannot take
            for state in states:
                state["step"] -= 1
            try:
                locate_failure(plan, params, states, hparams)
            except NLDSLError as located:    # its cause keeps the generated line's traceback
                raise located from error
            raise

    def step(params, states, hparams):
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
            group = [params[i] for i in index], [params[i].grad for i in index], [states[i] for i in index]
            step = namespace["step_group"]
            if mode == "fused kernel" and not _kernel_applies(*group, moments):
                step = fallback
            step(*group, hparams, key[0])

    run.source, run.mode = source, mode
    return run
