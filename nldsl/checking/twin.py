"""check_twin: an optimizer spec and a torch optimizer make the same steps.

Both optimize copies of three float64 matrices (two of one shape, one of another) with the same
drawn gradients for a drawn number of steps (2-12); at a drawn step both are rebuilt from their
`state_dict()` (deep copies, fresh optimizer objects), so resuming is part of what is compared.
Hyper-parameters are drawn inside the spec's declared ranges and passed to both, renamed by
`kwarg_map` (spec name -> torch name; None leaves a spec hyper-parameter at its default); by
default a spec hyper-parameter goes to torch under its own name when torch's constructor takes
it. A draw the torch class refuses (a ValueError from its constructor, such as SGD's Nesterov
with dampening) is discarded, not failed.

Tolerance: 2^12 roundings of the scale per step (4.5e-13 relative to the largest parameter
entry per step). A twin that runs torch's operations in torch's order agrees bit for bit
(tests/test_optim_twins.py); one that reassociates (Adagrad, RMSprop: sqrt and division in
another order) differs by a few roundings of each of the ~30 operations a step applies to an
entry, and the gradients are drawn, not computed from the parameters, so differences add over
steps rather than feed back. A different formula differs by O(lr) per step.
"""
from __future__ import annotations

import copy
import inspect

import torch
from hypothesis import assume

from nldsl.checking.report import EPS64, Report, fail, mismatch, run_property, scale_of, show
from nldsl.checking.schedules import SHAPES
from nldsl.checking.strategies import spec_of, streams
from nldsl.errors import NLDSLError

TOLERANCE_PER_STEP = 2 ** 12 * EPS64


def torch_kwargs(spec, torch_cls, kwarg_map: dict | None) -> dict[str, str]:
    """spec hyper-parameter -> torch keyword, for those passed to torch."""
    accepted = set(inspect.signature(torch_cls.__init__).parameters) - {"self", "params"}
    names = [h.name for h in spec.decl.hparams]
    if kwarg_map is not None:
        unknown = [n for n in kwarg_map if n not in names]
        if unknown:
            raise NLDSLError(f"kwarg_map names {', '.join(unknown)}, which {spec.name} does not "
                             f"declare; it has {', '.join(names)}")
        return {n: t for n, t in kwarg_map.items() if t is not None}
    return {n: n for n in names if n in accepted}


def check_twin(spec, torch_cls, kwarg_map: dict | None = None, examples: int = 10, deadline=None,
               seed: int = 0, schedule: str = "reference", fixed: dict | None = None) -> Report:
    """Compare `nldsl.optimizer(spec, schedule=schedule)` with `torch_cls` on drawn runs;
    raise CheckFailure at the first difference, return a Report."""
    spec = spec_of(spec)
    if spec.kind != "optimizer":
        raise NLDSLError(f"check_twin compares optimizers; {spec.name} is a module spec "
                         "(check_schedules and check_invariants apply to modules)")
    if not (isinstance(torch_cls, type) and issubclass(torch_cls, torch.optim.Optimizer)):
        raise TypeError(f"check_twin needs a torch.optim.Optimizer class, got {torch_cls!r}")
    mapping = torch_kwargs(spec, torch_cls, kwarg_map)
    held = {h.name for h in spec.decl.hparams} - set(mapping)
    from nldsl.language.consteval import hparam_values

    defaults = hparam_values(spec.decl)
    fixed = {**{n: defaults[n] for n in held if n in defaults}, **(fixed or {})}
    report = Report("twin", spec.name, checked=[f"{torch_cls.__name__} ({schedule} schedule)"])
    body = lambda stream: _compare(spec, torch_cls, mapping, schedule, stream)
    return run_property(report, streams(spec, fixed, max_length=12).filter(
        lambda s: s.length >= 2), body, examples, deadline, seed)


def _compare(spec, torch_cls, mapping, schedule, stream) -> None:
    import nldsl

    ours_kwargs = dict(stream.hparams)
    theirs_kwargs = {mapping[n]: v for n, v in stream.hparams.items() if n in mapping}
    gen = torch.Generator().manual_seed(stream.seed)
    start = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    make = {"nldsl": lambda p: nldsl.optimizer(spec, p, schedule=schedule, **ours_kwargs),
            torch_cls.__name__: lambda p: torch_cls(p, **theirs_kwargs)}
    params = {name: [p.clone().requires_grad_(True) for p in start] for name in make}
    opts = {"nldsl": make["nldsl"](params["nldsl"])}
    try:
        opts[torch_cls.__name__] = make[torch_cls.__name__](params[torch_cls.__name__])
    except ValueError:
        assume(False)             # torch refuses these values: not a case for the twin
    reload = 2 + stream.cut % (stream.length - 1)        # after step 1, before the last or sooner
    for step in range(1, stream.length + 1):
        grads = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
        if step == reload:
            for name in opts:
                saved = copy.deepcopy(opts[name].state_dict())
                opts[name] = make[name](params[name])
                opts[name].load_state_dict(saved)
        for name in opts:
            for p, g in zip(params[name], grads):
                p.grad = g.clone()
            opts[name].step()
        ours, theirs = params["nldsl"], params[torch_cls.__name__]
        for i, (a, b) in enumerate(zip(ours, theirs)):
            problem = mismatch(a.detach(), b.detach(), TOLERANCE_PER_STEP * step, scale_of(b))
            if problem:
                fail(f"{spec.name} and {torch_cls.__name__} differ at step {step} in parameter "
                     f"{i} {list(a.shape)}", [problem,
                     f"hyper-parameters = {stream.hparams}" + (
                         f" (torch: {theirs_kwargs})" if theirs_kwargs != stream.hparams else ""),
                     f"steps = {stream.length}, state_dict reloaded before step {reload}, "
                     f"seed = {stream.seed}",
                     f"nldsl ({schedule}) = {show(a)}", f"{torch_cls.__name__} = {show(b)}"])
