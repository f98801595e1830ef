"""check_invariants: properties every compiled spec has, whatever it computes.

Modules, in each schedule, on drawn streams (float64, drawn parameters):
  causality       the outputs at tokens <= c do not change when the inputs after c do;
  carried state   m(x[:, :c], end=False) then m(x[:, c:], state) equals m(x), outputs and final
                  state, for a cut c at a multiple of the block size (so the chunked schedule's
                  blocks fall alike);
  state_dict      a second module loaded with m.state_dict() computes the same outputs, and a
                  fast state saved with torch.save and loaded continues the stream alike;
  determinism     compiling twice under one torch seed gives the same parameters, and one module
                  run twice on one input gives the same outputs.
Optimizers, in each schedule: a run resumed from its state_dict (deep-copied, and through
torch.save) into a fresh optimizer equals the uninterrupted run; two runs are equal.

All of these compare the same operations on the same values, so they are bit for bit (tolerance
0), except the chunked schedule's cut stream, whose second call starts its own blocks and whose
sums reassociate: within check_schedules' tolerance (2^-29 of the scale).
"""
from __future__ import annotations

import copy
import io

import torch

from nldsl.checking.module_units import drawn_module
from nldsl.checking.report import Report, fail, flat_outputs, mismatch, run_property, scale_of, \
    show
from nldsl.checking.schedules import SHAPES, TOLERANCE
from nldsl.checking.strategies import spec_of, streams


def check_invariants(spec, examples: int = 10, deadline=None, seed: int = 0,
                     fixed: dict | None = None, schedules: tuple[str, ...] | None = None) -> Report:
    """Check every invariant of the spec's kind in every schedule (or those given)."""
    spec = spec_of(spec)
    module = spec.kind == "module"
    schedules = schedules or (("reference", "chunked") if module else ("reference", "fused"))
    names = ["causality", "carried state", "state_dict", "determinism"] if module else \
        ["resume from state_dict", "determinism"]
    report = Report("invariants", spec.name, checked=[f"{', '.join(names)} ({', '.join(schedules)})"])
    check = _module if module else _optimizer
    body = lambda stream: [check(spec, stream, schedule) for schedule in schedules]
    return run_property(report, streams(spec, fixed), body, examples, deadline, seed)


def _same(what: str, spec, schedule: str, stream, got: dict, want: dict, tol: float = 0.0):
    for name in want:
        problem = mismatch(got[name], want[name], tol, scale_of(want[name])) if name in got \
            else "missing"
        if problem:
            fail(f"{spec.name} ({schedule} schedule) breaks an invariant: {what}, in {name}",
                 [problem, f"hyper-parameters = {stream.hparams}",
                  f"batch = {stream.batch}, length = {stream.length}, block_size = "
                  f"{stream.block_size}, cut = {stream.cut}, seed = {stream.seed}",
                  f"expected {name} = {show(want[name])}", f"got      {name} = {show(got[name])}"])


def _module(spec, stream, schedule: str) -> None:
    import nldsl

    m = drawn_module(spec, stream.hparams, stream.seed, schedule, stream.block_size)
    gen = torch.Generator().manual_seed(stream.seed + 1)
    x = torch.randn(stream.batch, stream.length, m.program.dim, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        y, state = m(x)
        c = stream.cut
        changed = x.clone()
        changed[:, c:] = torch.randn(changed[:, c:].shape, generator=gen, dtype=x.dtype)
        _same(f"causality (inputs after token {c} changed)", spec, schedule, stream,
              {"out[:, :cut]": m(changed)[0][:, :c]}, {"out[:, :cut]": y[:, :c]})

        cut = c - c % stream.block_size
        y1, carried = m(x[:, :cut], end=False)
        y2, carried = m(x[:, cut:], carried)
        tol = TOLERANCE if schedule == "chunked" else 0.0
        _same(f"state carried across calls (cut at token {cut})", spec, schedule, stream,
              flat_outputs(torch.cat([y1, y2], 1), carried), flat_outputs(y, state), tol)

        twin = drawn_module(spec, stream.hparams, stream.seed + 7, schedule, stream.block_size)
        twin.load_state_dict(m.state_dict())
        _same("state_dict round trip", spec, schedule, stream, flat_outputs(*twin(x)),
              flat_outputs(y, state))
        y1, middle = m(x[:, :c], end=False)
        buffer = io.BytesIO()
        torch.save(middle, buffer)
        buffer.seek(0)
        reloaded = torch.load(buffer, weights_only=False)
        _same(f"fast state saved and loaded at token {c}", spec, schedule, stream,
              flat_outputs(*m(x[:, c:], reloaded)), flat_outputs(*m(x[:, c:], middle)))

        runs = []
        for _ in range(2):
            torch.manual_seed(stream.seed)
            fresh = nldsl.compile(spec, schedule=schedule, block_size=stream.block_size,
                                  **stream.hparams).double()
            runs.append({**{f"parameter {n}": p.detach() for n, p in fresh.named_parameters()},
                         **flat_outputs(*fresh(x))})
        _same("determinism (compiled twice under one seed)", spec, schedule, stream, *runs)
        _same("determinism (run twice)", spec, schedule, stream, flat_outputs(*m(x)),
              flat_outputs(y, state))


def _optimizer(spec, stream, schedule: str) -> None:
    import nldsl

    gen = torch.Generator().manual_seed(stream.seed)
    start = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    grads = [[torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
             for _ in range(stream.length)]

    def run(resume_at=None, through_file=False) -> dict:
        torch.manual_seed(stream.seed)        # what a spec draws itself (an mlp memory's start)
        params = [p.clone().requires_grad_(True) for p in start]
        make = lambda: nldsl.optimizer(spec, params, schedule=schedule, **stream.hparams)
        opt = make()
        for step, step_grads in enumerate(grads):
            if step == resume_at:
                saved = copy.deepcopy(opt.state_dict())
                if through_file:
                    buffer = io.BytesIO()
                    torch.save(saved, buffer)
                    buffer.seek(0)
                    saved = torch.load(buffer, weights_only=False)
                opt = make()
                opt.load_state_dict(saved)
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            opt.step()
        values = {f"W{i}": p.detach() for i, p in enumerate(params)}
        values.update({f"W{i}.{k}": v for i, p in enumerate(params)
                       for k, v in opt.state[p].items() if isinstance(v, torch.Tensor)})
        return values

    want = run()
    _same(f"resume from state_dict before step {stream.cut + 1}", spec, schedule, stream,
          run(stream.cut), want)
    _same(f"resume from a saved state_dict before step {stream.cut + 1}", spec, schedule, stream,
          run(stream.cut, True), want)
    _same("determinism (run twice)", spec, schedule, stream, run(), want)
