"""check_schedules: the fast schedule computes what the reference computes.

Optimizers: `fused` against `reference` (nldsl.optimizer) on three float64 matrices, two of one
shape (so the fused code groups them) and one of another, for a drawn number of steps with
drawn gradients; parameters and every state entry are compared after every step. A spec whose
Newton-Schulz runs in bfloat16 or float32 is checked in its float64 variant (`float64_variant`:
only the `precision` arguments change): in a low precision the batched and per-matrix products
round apart by far more than any tolerance could separate from a bug (docs/optimizers.md,
Schedules).

Modules: `chunked` (with a drawn `block_size`) against `reference` (nldsl.compile) in float64,
on drawn batches and lengths: outputs, the final state, and the gradients of a drawn linear
function of the outputs with respect to x and to every parameter.

Tolerance: 2^24 roundings of the scale (2^-29, 1.9e-9 relative to the largest magnitude of
the compared tensor). Either side rounds each entry at most ~2^10 times per step or token (sums
of at most 64 products; 5 quintic Newton-Schulz iterations of 3 products each), and reassociated
sums then differ by as many roundings; the dynamics amplify them by at most 2^14 over the drawn
lengths (<= 12: the quintic's slope 3.44 per iteration, a delta rule's block triangular solve
of <= 8 tokens with |entries| <= 2, (1 + 2)^8 < 2^13; measured worst: 8e-11 relative for M3's
EMA form, tests/test_optim_schedules.py). A fast path that is wrong differs by O(1).
"""
from __future__ import annotations

import torch

from nldsl.language import ast
from nldsl.checking.module_units import drawn_module
from nldsl.checking.report import EPS64, Report, fail, flat_outputs, mismatch, run_property, \
    scale_of, show
from nldsl.checking.strategies import spec_of, streams

TOLERANCE = 2 ** 24 * EPS64
SHAPES = ((3, 4), (3, 4), (4, 2))


def float64_variant(spec):
    """The spec with every Newton-Schulz `precision` set to "float64" (the same spec if none)."""
    from nldsl.language.printer import format_spec
    from nldsl.spec import load

    changed = []

    def visit(node):
        if isinstance(node, ast.Rule) and node.name == "newton_schulz":
            kwargs = [k for k in node.kwargs if k.name != "precision"]
            args = node.args[:3]
            changed.append(node)
            return node.model_copy(update={"args": args, "kwargs": kwargs + [ast.Keyword(
                name="precision", value=ast.String(value="float64"))]})
        if isinstance(node, ast.Call) and node.func == "newton_schulz":
            changed.append(node)
            kwargs = [k for k in node.kwargs if k.name != "precision"]
            return node.model_copy(update={"args": node.args[:4], "kwargs": kwargs + [
                ast.Keyword(name="precision", value=ast.String(value="float64"))]})
        if not isinstance(node, ast.Node):
            return node
        return node.model_copy(update={f: visit(v) if isinstance(v, ast.Node) else
                                       [visit(x) for x in v] if isinstance(v, list) else v
                                       for f, v in node})

    decl = visit(spec.decl)
    return load(format_spec(decl)) if changed else spec


def check_schedules(spec, examples: int = 10, deadline=None, seed: int = 0,
                    fixed: dict | None = None) -> Report:
    """Compare the schedules on `examples` drawn runs; raise CheckFailure at the first
    difference, return a Report."""
    spec = spec_of(spec)
    report = Report("schedules", spec.name)
    if spec.kind == "optimizer":
        variant = float64_variant(spec)
        report.checked = ["fused = reference"] + (
            ["Newton-Schulz in float64"] if variant is not spec else [])
        body = lambda stream: _optimizer(variant, stream)
    else:
        seen: set[str] = set()
        body = lambda stream: seen.add(_module(spec, stream))
    run_property(report, streams(spec, fixed), body, examples, deadline, seed)
    if spec.kind == "module":
        report.checked = ["chunked = reference: outputs, final states, gradients",
                          "fast paths: " + " / ".join(sorted(seen))]
    return report


def _optimizer(spec, stream) -> None:
    import nldsl

    gen = torch.Generator().manual_seed(stream.seed)
    start = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
             for _ in range(stream.length)]
    runs = {}
    for schedule in ("reference", "fused"):
        torch.manual_seed(stream.seed)        # what a spec draws itself (an mlp memory's start)
        params = [p.clone().requires_grad_(True) for p in start]
        opt = nldsl.optimizer(spec, params, schedule=schedule, **stream.hparams)
        runs[schedule] = (params, opt, [])
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            opt.step()
            runs[schedule][2].append(_snapshot(params, opt))
    for step, (want, got) in enumerate(zip(runs["reference"][2], runs["fused"][2]), 1):
        for name in want:
            problem = mismatch(got.get(name), want[name], TOLERANCE, scale_of(want[name])) \
                if name in got else "missing in the fused schedule's state"
            if problem:
                fail(f"{spec.name}: the fused schedule differs from the reference at step {step}, "
                     f"in {name}", [problem, f"hyper-parameters = {stream.hparams}",
                                    f"steps = {stream.length}, seed = {stream.seed}, "
                                    f"parameter shapes = {list(SHAPES)}",
                                    f"reference {name} = {show(want[name])}",
                                    f"fused     {name} = {show(got[name])}"])


def _snapshot(params, opt) -> dict:
    values = {}
    for i, p in enumerate(params):
        values[f"W{i}"] = p.detach().clone()
        for key, value in opt.state[p].items():
            if isinstance(value, torch.Tensor):
                values[f"W{i}.{key}"] = value.detach().clone()
    return values


def _module(spec, stream) -> str:
    """Compare the schedules on one stream; return the fast paths the chunked one took."""
    results = {}
    for schedule in ("reference", "chunked"):
        module = drawn_module(spec, stream.hparams, stream.seed, schedule, stream.block_size)
        gen = torch.Generator().manual_seed(stream.seed + 1)
        x = torch.randn(stream.batch, stream.length, module.program.dim, generator=gen,
                        dtype=torch.float64, requires_grad=True)
        weights = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        y, state = module(x)
        named = dict(module.named_parameters())
        grads = torch.autograd.grad((y * weights).sum(), [x] + list(named.values()),
                                    allow_unused=True)
        values = flat_outputs(y, state)
        values.update({f"d(out)/d{name}": g for name, g in zip(["x"] + list(named), grads)
                       if g is not None})
        results[schedule] = (values, module.fast_paths)
    (want, _), (got, fast) = results["reference"], results["chunked"]
    paths = ", ".join(f"{lv}: {type(form).__name__}" for lv, form in fast.items()) or \
        "none (the token loop ran)"
    for name in want:
        problem = mismatch(got[name], want[name], TOLERANCE, scale_of(want[name])) \
            if name in got else "missing in the chunked schedule"
        if problem:
            fail(f"{spec.name}: the chunked schedule differs from the reference in {name}",
                 [problem, f"hyper-parameters = {stream.hparams}",
                  f"batch = {stream.batch}, length = {stream.length}, "
                  f"block_size = {stream.block_size}, seed = {stream.seed}",
                  f"fast paths: {paths}",
                  f"reference {name} = {show(want[name])}", f"chunked   {name} = {show(got[name])}"])
    return paths
