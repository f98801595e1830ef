"""check_equivalent: two module specs compute the same module.

The use: a memory written by its objective (`minimize huber(M(k), v, delta) by gd(lr = beta)`)
beside the update derived by hand (`M <- M - beta * outer(clamp(M(k) - v, -delta, delta), k)`),
to check the derivation; or a spec before and after a rewrite. Both are compiled in the
reference schedule with the same drawn hyper-parameters (the first spec's ranges), the second
loads the first's parameters (so their names and shapes must agree), and both read the same
drawn stream (float64): outputs and final fast states must agree.

Tolerance: that of check_schedules (2^-29 of the scale): the two compute one recurrence with
different operations (an autograd gradient against a closed form), each token's entries
rounding a few hundred times, over <= 12 tokens.
"""
from __future__ import annotations

import torch

from nldsl.checking.module_units import drawn_module
from nldsl.checking.report import Report, fail, flat_outputs, mismatch, run_property, scale_of, \
    show
from nldsl.checking.schedules import TOLERANCE
from nldsl.checking.strategies import spec_of, streams
from nldsl.errors import NLDSLError


def check_equivalent(spec, other, examples: int = 10, deadline=None, seed: int = 0,
                     fixed: dict | None = None) -> Report:
    """Compare `spec` and `other` on drawn streams; raise CheckFailure at the first
    difference, return a Report."""
    spec, other = spec_of(spec), spec_of(other)
    for s in (spec, other):
        if s.kind != "module":
            raise NLDSLError(f"check_equivalent compares module specs; {s.name} is an optimizer "
                             "(check_twin compares an optimizer with a torch one)")
    mine, theirs = ({h.name for h in s.decl.hparams} for s in (spec, other))
    if mine != theirs:
        raise NLDSLError(f"{spec.name} and {other.name} must declare the same hyper-parameters: "
                         f"{sorted(mine ^ theirs)} appear in one only")
    report = Report("equivalent", spec.name,
                    checked=[f"{spec.name} = {other.name}: outputs, final states"])
    return run_property(report, streams(spec, fixed), lambda s: _compare(spec, other, s),
                        examples, deadline, seed)


def _compare(spec, other, stream) -> None:
    first = drawn_module(spec, stream.hparams, stream.seed)
    second = drawn_module(other, stream.hparams, stream.seed)
    missing = set(dict(first.named_parameters())) ^ set(dict(second.named_parameters()))
    if missing:
        raise NLDSLError(f"{spec.name} and {other.name} must have the same parameters: "
                         f"{sorted(missing)} belong to one only")
    second.load_state_dict(first.state_dict())
    gen = torch.Generator().manual_seed(stream.seed + 1)
    x = torch.randn(stream.batch, stream.length, first.program.dim, generator=gen,
                    dtype=torch.float64)
    with torch.no_grad():
        results = [flat_outputs(*m(x)) for m in (first, second)]
    want, got = results
    for name in sorted(want, key=lambda n: n == "out"):      # the states first: what was written
        problem = mismatch(got[name], want[name], TOLERANCE, scale_of(want[name])) \
            if name in got else f"{other.name} has no {name}"
        if problem:
            fail(f"{spec.name} and {other.name} differ in {name}",
                 [problem, f"hyper-parameters = {stream.hparams}",
                  f"batch = {stream.batch}, length = {stream.length}, seed = {stream.seed}",
                  f"x = {show(x)}",
                  f"{spec.name}: {name} = {show(want[name])}",
                  f"{other.name}: {name} = {show(got[name])}"])

