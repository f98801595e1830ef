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
Statements go through one `Emitter` (nldsl/lower/emit.py): a write of a slower level sits in a
`with out.block("if writing:")`, never behind a hard-coded indent.
"""
from __future__ import annotations

import itertools
import linecache
import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from nldsl.language import ast
from nldsl.language.consteval import calls_in
from nldsl.errors import NLDSLCompileError, NLDSLError
from nldsl.lower.emit import Emitter
from nldsl.lower.timing import writes_at
from nldsl.optim import kernels as K
from nldsl.lower.derive import mentions
from nldsl.optim.evaluate import FAILURES
from nldsl.optim.interpret import locate_failure
from nldsl.optim.ir import Plan, Write
from nldsl.optim.patterns import match_adam
from nldsl.optim.plan import PARAM
from nldsl.optim.printer import SHAPED, NotVectorizable, Printer, literal, user
from nldsl.optim.snapshot import copied, dependency_order, period_one, snapshot

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


def _header(out: Emitter, plan: Plan, mode: str) -> None:
    out.line(f"# nldsl optimizer {literal(plan.name)}, schedule fused ({mode}), generated from its plan")
    if plan.folded:
        out.line("# folded: " + ", ".join(f"{k} = {literal(v)}" for k, v in plan.folded.items()))


def _hparams(out: Emitter, plan: Plan) -> None:
    out.line("u_step = step")
    for h in plan.hparams:
        out.line(f"{user(h)} = hp[{literal(h)}]")


def _writing(out: Emitter, guarded: bool):
    """The block of a write made only at a slower level's writes (`if writing:`), or, for one
    made every step, no block: the same statements either way, at the right depth."""
    return out.block("if writing:") if guarded else nullcontext()


def generate_foreach(plan: Plan) -> str:
    """Source of `step_group(params, grads, states, hp, step)` over lists of tensors that share
    their step count, so every level writes on the same steps. When the plan reads a shape or
    orthogonalises (`by_shape`), the lists also share one shape, dtype and device: a shape value
    is the first tensor's and Newton-Schulz runs once per group (`K.newton_schulz_group`)."""
    if any(w.autograd or w.restart for lv in plan.levels for w in lv.writes) or any(
            isinstance(s.shape, ast.MLPShape) for s in plan.states.values()):
        raise NotVectorizable("plan")
    p = Printer(_tensor_names(plan), foreach=True, by_shape=by_shape(plan))
    out = Emitter()
    _header(out, plan, _foreach_mode(plan))
    with out.block("def step_group(params, grads, states, hp, step):"):
        out.line(f"{user(PARAM)} = params")
        out.line("grad = grads")
        _hparams(out, plan)
        for s, sp in plan.states.items():
            if s != PARAM and sp.persistent:
                out.line(f"{user(s)} = [st[{literal(s)}] for st in states]")
        snapshot(out, plan, p, foreach=True)

        def hold(name: str, value: ast.Expr) -> None:
            p.emit(out, f"for st, x in zip(states, {copied(plan, value, p.expr(value)[0], True)}):")
            with out.block():
                out.line(f"st[{literal('read.' + name)}] = x")
            # the later levels of this step read the new value, as the reference's lookup does
            out.line(f"{user(name)} = [st[{literal('read.' + name)}] for st in states]")

        _levels(out, plan, p, _foreach_write, hold)
    return out.text()


def _levels(out: Emitter, plan: Plan, p: Printer, write, hold) -> None:
    """Each level in update order: its writes (`write`), then its reads: computed at once for
    an every-step level, stored by `hold` at the writes of a slower one."""
    for level in plan.levels:
        period = p.expr(level.period)[0]
        out.line(f"# level {level.name}, every {period} step(s)")
        if not period_one(level):
            p.emit(out, f"writing = writes_at({period}, step)")
        for one in level.writes:
            write(out, plan, p, level, one)
        if period_one(level):
            for name, (value, before) in level.reads.items():
                if not before:
                    p.emit(out, f"{user(name)} = {copied(plan, value, p.expr(value)[0], p.foreach)}")
        elif level.reads:
            with out.block("if writing:"):
                for name, (value, _) in level.reads.items():
                    hold(name, value)


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


def _emit_store(out: Emitter, p: Printer, target: str, value: ast.Expr, note: str) -> None:
    """`target * c +- rest` (rest free of target) as two in-place ops, scaling then adding,
    the order of torch's decoupled weight decay; anything else through `_store`."""
    t, name = ast.Name(id=target), user(target)
    left = value.left if isinstance(value, ast.Binary) and value.op in "+-" else None
    if isinstance(left, ast.Binary) and left.op == "*" and not mentions(value.right, target):
        factor = left.right if left.left == t else left.left if left.right == t else None
        if factor is not None and p.expr(factor)[1] is False:
            rest = ast.Binary(op=value.op, left=t, right=value.right)
            p.emit(out, f"torch._foreach_mul_({name}, {p.expr(factor)[0]})")
            p.emit(out, _store(name, p.expr(rest)[0]) + note)
            return
    p.emit(out, _store(name, p.expr(value)[0]) + note)


def _foreach_write(out: Emitter, plan: Plan, p: Printer, level, write: Write) -> None:
    t, note = user(write.target), f"  # {write.derivation}"
    if write.accumulate:
        key = literal("acc." + write.target)
        p.emit(out, f"change = torch._foreach_sub({p.expr(write.value)[0]}, {t}){note}")
        out.line(f"total = [st[{key}] + c if {key} in st else c for st, c in zip(states, change)]")
        with out.block("if writing:"):
            out.line(f"torch._foreach_add_({t}, total)")
            with out.block("for st in states:"):
                out.line(f"st.pop({key}, None)")
        with out.block("else:"), out.block("for st, c in zip(states, total):"):
            out.line(f"st[{key}] = c")
        return
    with _writing(out, not period_one(level)):
        if write.target == PARAM or plan.states[write.target].persistent:
            _emit_store(out, p, write.target, write.value, note)
        else:
            p.emit(out, f"{t} = {p.expr(write.value)[0]}{note}")


def generate_loop(plan: Plan) -> str:
    """Source of `step_tensor(W, state, hp, step)` for one tensor."""
    p = Printer(_tensor_names(plan), foreach=False)
    w = user(PARAM)
    out = Emitter()
    _header(out, plan, "loop")
    with out.block(f"def step_tensor({w}, state, hp, step):"):
        out.line(f"grad = {w}.grad")
        _hparams(out, plan)
        for s, sp in plan.states.items():
            if s == PARAM or not sp.persistent:
                continue
            if isinstance(sp.shape, ast.MLPShape):
                acts = [o for o in sp.shape.options if o in K.ACTIVATIONS] or ["gelu"]
                out.line(f"{user(s)} = K.load_mlp(state, {literal(s)}, {literal(acts[0])}, "
                         f"{literal('residual' in sp.shape.options)})")
            else:
                out.line(f"{user(s)} = state[{literal(s)}]")
        snapshot(out, plan, p, foreach=False)
        _levels(out, plan, p, _loop_write, lambda name, value: p.emit(
            out, f"{user(name)} = state[{literal('read.' + name)}] = "
                 f"{copied(plan, value, p.expr(value)[0], False)}"))
    return out.text()


def _loop_write(out: Emitter, plan: Plan, p: Printer, level, write: Write) -> None:
    """An accumulated write guards its own store (`_loop_accumulate`); any other write of a
    slower level is made inside `if writing:`."""
    t, key, note = user(write.target), literal(write.target), f"  # {write.derivation}"
    with _writing(out, not (period_one(level) or write.accumulate)):
        if write.restart is not None:
            p.emit(out, f"{t} = {p.expr(write.restart)[0]}")
            p.emit(out, f"for _ in range(int({p.expr(write.repeat)[0]})):")
            with out.block():
                p.emit(out, f"{t} = {p.expr(write.value)[0]}{note}")
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
            _loop_accumulate(out, p, write, value, note)
        elif write.target == PARAM:
            p.emit(out, f"{t}.copy_({value}){note}")
        elif isinstance(plan.states[write.target].shape, ast.MLPShape):
            p.emit(out, f"{t} = {value}{note}")
            out.line(f"K.store_mlp(state, {key}, {t})")
        else:
            store = f"; state[{key}] = {t}" if plan.states[write.target].persistent else ""
            p.emit(out, f"{t} = {value}{store}{note}")


def _loop_accumulate(out: Emitter, p: Printer, write: Write, value: str, note: str) -> None:
    """A slower level's change summed every step in `acc.<state>`, written at its writes."""
    t, key, acc = user(write.target), literal(write.target), literal("acc." + write.target)
    p.emit(out, f"change = {value} - {t}{note}")
    out.line(f"total = change if {acc} not in state else state[{acc}] + change")
    with out.block("if writing:"):
        out.line(f"{t} = {t} + total")
        out.line(f"state[{key}] = {t}")
        out.line(f"state.pop({acc}, None)")
    with out.block("else:"):
        out.line(f"state[{acc}] = total")


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
