"""`nldsl compile MODULE --show-code`: what the module compiler made of a spec, as text.

The module compiler interprets its Program (no per-spec Python is generated): this prints the
program per level and unit, in the order the reference runs it, the fast path each level takes
in the chunked schedule (the recognised form's coefficients), and the source of the kernel.
"""
from __future__ import annotations

import inspect

from nldsl.lower.program import ModuleWrite, Program
from nldsl.printer import format_expr


def describe(program: Program, fast_paths: dict, shapes: dict | None = None) -> str:
    """The program as text; `shapes` are the built module's parameter shapes (conv kernels get
    their channel count at construction)."""
    shapes = shapes or {}
    lines = [f"# module {program.name}: "
             + ", ".join(f"{k}={v!r}" for k, v in program.hparams.items())]
    lines.append("# parameters (outer level):")
    for param in program.params.values():
        shape = "[" + ", ".join(str(d) for d in shapes.get(param.name, param.shape)) + "]"
        role = {"conv": "conv kernel", "initial": f"initial state, learned by {param.owner}"}.get(
            param.role, "state")
        lines.append(f"#   {param.name} {shape}  ({role})")
    for name, value in program.outer_contexts.items():
        lines.append(f"let {name} = {format_expr(value)}")
    for level in program.levels:
        heads = f", {level.heads} heads" if level.heads is not None else ""
        lines.append(f"\nlevel {level.name}: every {level.period} tokens, chunk {level.chunk}"
                     f"{heads}, {'backprop' if level.backprop else 'writes detached'}, "
                     f"partial {level.partial}")
        for state in level.states.values():
            start = state.learned or (format_expr(state.init) if state.init is not None else "0")
            lines.append(f"  state {state.name} [{', '.join(map(str, state.shape))}] starts at {start}")
        for name, value in level.contexts.items():
            lines.append(f"  {name} = {format_expr(value)}    # before writes")
        for write in level.writes:
            lines.append("  " + _write(write))
        for name, (value, before) in level.reads.items():
            lines.append(f"  read {name} = {format_expr(value)}" + ("    # before write" if before else ""))
        form = fast_paths.get(level.name)
        if form is None:
            lines.append("  # chunked schedule: no fast form, token by token")
        else:
            lines.append(f"  # chunked schedule: linear memory M_t = a M - c (M k) k^T + w k^T with")
            for label, expr in (("a", form.decay), ("c", form.erase), ("k", form.key), ("w", form.write)):
                lines.append(f"  #   {label} = {format_expr(expr)}")
    lines.append(f"\nout = {format_expr(program.output)}")
    if fast_paths:
        from nldsl.module.delta_chunk import linear_delta_blocks
        lines.append("\n# the chunked kernel (nldsl/module/delta_chunk.py):")
        lines.append(inspect.getsource(linear_delta_blocks))
    return "\n".join(lines) + "\n"


def _write(write: ModuleWrite) -> str:
    if write.kind == "explicit":
        return f"{write.target} <- {format_expr(write.value)}"
    grad = format_expr(write.grad) if write.grad is not None else \
        f"autograd of {format_expr(write.loss)}"
    text = f"G = {grad}    # at the chunk start\n  "
    if write.kind == "momentum":
        text += (f"{write.target}_momentum <- {format_expr(write.beta)} * {write.target}_momentum"
                 f" - {format_expr(write.lr)} * G\n  {write.target} <- {format_expr(write.decay)}"
                 f" * {write.target} + {write.target}_momentum")
    else:
        text += f"{write.target} <- {format_expr(write.decay)} * {write.target} - {format_expr(write.lr)} * G"
    return text + f"    [{write.derivation}]"
