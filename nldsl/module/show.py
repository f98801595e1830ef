"""`nldsl compile MODULE --show-code`: what the module compiler made of a spec, as text.

The module compiler interprets its Program (no per-spec Python is generated): this prints the
program per level and token in the order the reference runs it, with what the Program makes
explicit (head split and merge, the stage each context and read is evaluated at), the fast path
each level takes in the chunked schedule (the recognised form's coefficients), and the source
of the kernel. Printed with one emitter (nldsl/lower/emit.py), so blocks nest by indentation.
"""
from __future__ import annotations

import inspect

from nldsl.language import ast
from nldsl.lower.chain_forms import ChainForm
from nldsl.lower.deep_forms import DeepForm
from nldsl.lower.derived_forms import DerivedForm
from nldsl.lower.forms import LinearForm
from nldsl.lower.periodic_forms import PeriodicForm
from nldsl.lower.task import FrozenForm
from nldsl.lower.emit import Emitter
from nldsl.lower.program import HeadMerge, HeadSplit, ModuleWrite, Program, TokenLevel
from nldsl.language.printer import format_expr

_ROLES = {"conv": "conv kernel", "state": "state"}


def describe(program: Program, fast_paths: dict, shapes: dict | None = None) -> str:
    """The program as text; `shapes` are the built module's parameter shapes (conv kernels get
    their channel count at construction)."""
    shapes = shapes or {}
    out = Emitter()
    out.line(f"# module {program.name}: "
             + ", ".join(f"{k}={v!r}" for k, v in program.hparams.items()))
    with out.block("# parameters (outer level):"):
        for param in program.params.values():
            role = _ROLES.get(param.role, f"initial state, learned by {param.owner}")
            out.line(f"# {param.name} {_dims(shapes.get(param.name, param.shape))}  ({role})")
    for name, value in program.outer_contexts.items():
        out.line(f"let {name} = {format_expr(value)}")
    for level in program.levels:
        out.line()
        _level(out, level, fast_paths.get(level.name))
    out.line()
    out.line(f"out = {format_expr(program.output)}    # after every level's write")
    if any(isinstance(form, LinearForm) for form in fast_paths.values()):
        from nldsl.module.delta_chunk import linear_delta_blocks
        out.line()
        out.line("# the chunked kernel (nldsl/module/delta_chunk.py):")
        out.lines(inspect.getsource(linear_delta_blocks))
    if any(isinstance(form, DeepForm) for form in fast_paths.values()):
        from nldsl.module.deep_chunk import run_deep_level
        out.line()
        out.line("# the deep-memory chunk loop (nldsl/module/deep_chunk.py):")
        out.lines(inspect.getsource(run_deep_level))
    if any(isinstance(form, PeriodicForm) for form in fast_paths.values()):
        from nldsl.module.periodic_chunk import run_periodic_level
        out.line()
        out.line("# the periodic loop of a `once` level (nldsl/module/periodic_chunk.py):")
        out.lines(inspect.getsource(run_periodic_level))
    return out.text()


def _level(out: Emitter, level: TokenLevel, form) -> None:
    heads = f", {level.heads} heads" if level.heads is not None else ""
    chunk = "task loss (nldsl.stream)" if level.task else f"chunk {level.chunk}"
    header = (f"level {level.name}: every {level.period} tokens, {chunk}{heads}, "
              f"{'backprop' if level.backprop else 'writes detached'}, partial {level.partial}"
              f"{', one rule step per period (once)' if level.once else ''}")
    with out.block(header):
        for state in level.states.values():
            if state.restart is not None:
                out.line(f"# {state.name} <- {state.restart[0]}.{state.restart[1]} at the start "
                         f"of each period of {state.restart[0]} (eq. 72: nldsl.stream restarts it)")
            start = state.learned or (format_expr(state.init) if state.init is not None else "0")
            if state.mlp is not None:
                layers = ", ".join(_dims(part) for part in state.mlp.parts)
                start = f"{start}_w1.." if state.learned else start
                out.line(f"state {state.name} mlp {' -> '.join(map(str, state.mlp.widths))} "
                         f"({state.mlp.activation}{', layernorm' if state.mlp.norm else ''}"
                         f"{', residual' if state.mlp.residual else ''}): "
                         f"weights {layers}, flat {_dims(state.shape)}, starts at {start}")
                continue
            out.line(f"state {state.name} {_dims(state.shape)} starts at {start}")
        for name, shape in level.hidden.items():
            out.line(f"state {name} {_dims(shape)} starts at 0    # the rule's hidden state")
        for name in level.windowed:
            out.line(f"state {name}.window: {name} at the last {level.window - 1} tokens, "
                     "oldest first    # the window's ring buffer")
        if level.splits or level.merges:
            with out.block("# heads:"):
                for split in level.splits:
                    out.line(f"# {_split(split)}")
                for merge in level.merges:
                    out.line(f"# {_merge(merge)}")
        with out.block("# every token, before the writes:"):
            for name, value in level.contexts.items():
                out.line(f"{name} = {format_expr(value)}    # {_stage(level, name)}")
        n = level.period
        when = "" if n == 1 else f" (each token's change, summed; written at t = {n}, {2 * n}, ...)"
        if level.task:
            with out.block(f"# the task driver's write{when}, frozen inside the module:"):
                for write in level.task:
                    out.line(f"G = d(task loss)/d{write.target}    # nldsl.stream: at "
                             f"{write.target}'s last write, all tokens of a segment at once")
                    out.line(f"{write.target} <- {_factor(write.decay)} * {write.target} - "
                             f"{_factor(write.lr)} * G    [{write.derivation}]")
        else:
            with out.block(f"# the write{when}:"):
                for write in level.writes:
                    _write(out, write)
        with out.block("# reads:"):
            for name, (value, _) in level.reads.items():
                out.line(f"read {name} = {format_expr(value)}    # {_stage(level, name)}")
        _form(out, form)


def _stage(level: TokenLevel, name: str) -> str:
    """The Placement in words: its stage, the states it sees, and for a read the contexts it
    uses (evaluated before the write)."""
    placement = level.placements[name]
    seen = ", ".join(placement.states)
    text = {"input": "input: no state",
            "snapshot": f"snapshot: sees {seen} at the chunk start" if level.chunk > 1 else
                        f"snapshot: sees {seen} before the write",
            "before writes": f"sees {seen} before this token's writes",
            "after write": f"after write: sees {seen} written",
            "before write": f"before write: sees {seen} at the chunk start" if level.chunk > 1
                            else f"before write: sees {seen} before the write"}[placement.stage]
    if name in level.reads and placement.contexts:
        text += "; " + ", ".join(placement.contexts) + " from before the write"
    return text


def _split(split: HeadSplit) -> str:
    per_head = "one scalar" if split.width is None else f"width {split.width}"
    return f"{split.name}: split into {split.heads} heads, {per_head} each"


def _merge(merge: HeadMerge) -> str:
    return f"{merge.read}: merged from {merge.heads} heads to width {merge.merged} outside"


def _write(out: Emitter, write: ModuleWrite) -> None:
    s = write.target
    if write.kind == "explicit":
        out.line(f"{s} <- {format_expr(write.value)}    [explicit, on {s} before the write]")
        return
    grad = format_expr(write.grad) if write.grad is not None else \
        f"autograd of {format_expr(write.loss)}"
    out.line(f"G = {grad}    # at the chunk start")
    if write.clip is not None:
        out.line(f"G <- G min(1, {_factor(write.clip)} / ||G||_F)    # the guard, per weight matrix")
    for step in write.chain:
        args = {k: _factor(v) for k, v in step.args.items()}
        if step.rule == "newton_schulz":
            out.line(f"G <- newton_schulz(G, {args['steps']})    [chain: per weight matrix]")
            continue
        gain = args["lr"] if step.rule == "momentum" else f"(1 - {args['beta']})"
        out.line(f"{step.buffer} <- {args['beta']} * {step.buffer} + {gain} * G; G <- "
                 f"{step.buffer}    [chain: {step.rule}]")
    lr, decay = _factor(write.lr), _factor(write.decay)
    if write.kind == "momentum":
        out.line(f"{s}_momentum <- {_factor(write.beta)} * {s}_momentum - {lr} * G")
        out.line(f"{s} <- {decay} * {s} + {s}_momentum    [{write.derivation}]")
    elif write.precondition is not None:
        k = format_expr(write.precondition)
        out.line(f"{s} <- {decay} * {s} - {lr} * ({s} k) k^T - {lr} * G,  k = {k}    "
                 f"[{write.derivation}; ({s} k) k^T on the weight that takes k]")
    else:
        out.line(f"{s} <- {decay} * {s} - {lr} * G    [{write.derivation}]")


def _factor(expr) -> str:
    """expr as the left factor of a product: a sum or difference in parentheses."""
    text = format_expr(expr)
    return f"({text})" if isinstance(expr, ast.Binary) and expr.op in "+-" else text


def _form(out: Emitter, form) -> None:
    if form is None:
        out.line("# chunked schedule: no fast form, token by token")
        return
    if isinstance(form, FrozenForm):
        out.line("# chunked schedule: frozen between the driver's writes, reads of all tokens at "
                 "once")
        return
    if isinstance(form, DerivedForm):
        read = ", ".join(sorted({memory for memory, _, _ in form.queries.values()}))
        out.line(f"# chunked schedule: derived memory chunk form (module/derived_chunk.py): the "
                 f"loss at {form.trained} of the chunk start, each token's {form.state} "
                 f"materialised for the reads of {read}")
        return
    if isinstance(form, ChainForm):
        chain = [step.rule for step in (form.transform, form.newton_schulz) if step is not None]
        window = f"window({format_expr(form.width)}) of " if form.width is not None else ""
        out.line(f"# chunked schedule: deep memory {form.deep.state}, chain chunk form "
                 f"({' then '.join(chain + ['gd'])} on {window}{format_expr(form.deep.loss)}; "
                 "module/chain_chunk.py)")
        return
    if isinstance(form, DeepForm):
        rule = "momentum" if form.beta is not None else "gradient"
        with out.block(f"# chunked schedule: deep memory {form.state}, chunk form ({rule} rule; "
                       "all gradients of a chunk at its start, one pass per chunk) with"):
            out.line(f"# loss = {format_expr(form.loss)}")
            gates = (("lr", form.lr), ("decay", form.decay)) + \
                ((("beta", form.beta),) if form.beta is not None else ()) + \
                ((("clip", form.clip),) if form.clip is not None else ())
            for label, expr in gates:
                out.line(f"# {label} = {format_expr(expr)}")
        return
    if isinstance(form, PeriodicForm):
        rule = "momentum" if form.beta is not None else "gradient"
        with out.block(f"# chunked schedule: `once` memory {form.state}, periodic form ({rule} "
                       "rule; one step per period from its summed gradients) with"):
            out.line(f"# loss = {format_expr(form.loss)}")
            gates = (("lr", form.lr), ("decay", form.decay)) + \
                ((("beta", form.beta),) if form.beta is not None else ())
            for label, expr in gates:
                out.line(f"# {label} = {format_expr(expr)}    # at the period's last token")
        return
    with out.block("# chunked schedule: linear memory M_t = a M - c (M k) k^T + w k^T with"):
        for label, expr in (("a", form.decay), ("c", form.erase), ("k", form.key),
                            ("w", form.write)):
            out.line(f"# {label} = {format_expr(expr)}")


def _dims(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"
