"""What a check returns or raises, and how it runs a property under a budget.

A check either returns a `Report` (passed, or not applicable with the reason) or raises
`CheckFailure`, an `AssertionError`, so that pytest shows it as a test failure; its message is the
first counterexample written out (the drawn values, the formula, both results). Hypothesis shrinks
the counterexample before it re-raises it, so the case printed is a small one.

Comparisons are normwise, per tensor: ||got - want||_inf <= tol * scale, where the scale is the
magnitude of what was computed (`scale_of`), so one tolerance serves values of any size. Each
check derives its `tol` from the arithmetic it compares and says how in its docstring.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from hypothesis import HealthCheck, Phase, given, seed as hypothesis_seed, settings
from hypothesis.errors import HypothesisException

from nldsl.errors import NLDSLError

#: float64's unit roundoff, 2^-53: one rounding changes a value by at most this, relatively.
EPS64 = 2.0 ** -53
#: How long hypothesis may shrink a counterexample before the smallest one found is reported.
SHRINK_SECONDS = 3.0


class CheckFailure(AssertionError):
    """A check found a counterexample; the message is the readable case."""


@dataclass
class Report:
    """The outcome of one check on one spec (a failure raises `CheckFailure` instead)."""

    check: str
    spec: str
    status: str = "pass"                 # pass | not applicable
    examples: int = 0                    # drawn cases run
    checked: list[str] = field(default_factory=list)   # what was compared (writes, schedules)
    reason: str = ""                     # why not applicable
    seconds: float = 0.0

    def __str__(self) -> str:
        if self.status != "pass":
            return f"{self.check} {self.spec}: {self.status} ({self.reason})"
        return f"{self.check} {self.spec}: pass, {self.examples} examples ({', '.join(self.checked)})"


def not_applicable(check: str, spec: str, reason: str) -> Report:
    return Report(check, spec, "not applicable", reason=reason)


def run_property(report: Report, strategy, body, examples: int, deadline, seed: int,
                 shrink_seconds: float | None = None) -> Report:
    """Run `body(drawn)` on `examples` draws of `strategy`; count them into `report`. `deadline`
    is milliseconds per example (None: no deadline), timed here rather than by hypothesis, so
    that a slow case shrinks within the same budget as a wrong one. The draws are fixed by `seed` and no
    example database is written, so a run is reproducible from its arguments alone. An
    exception other than CheckFailure and NLDSLError (a ZeroDivisionError at a hyper-parameter
    the spec's range allows) is a failure too, reported with the drawn case.

    After a failure hypothesis shrinks the case; `shrink_seconds` (default: the module's
    SHRINK_SECONDS, read at the call) after the first failure, the
    candidates it still tries pass unchecked, so it stops with the smallest failing case found
    by then (each candidate compiles a spec: unbounded shrinking can take minutes). The
    `explain` phase (which lines only failing cases ran, by tracing) is skipped: it costs
    seconds and the counterexample says more."""
    start = time.perf_counter()
    shrink_seconds = SHRINK_SECONDS if shrink_seconds is None else shrink_seconds
    failing: set[str] = set()
    first_failure: list[float] = []

    @hypothesis_seed(seed)
    @settings(max_examples=examples, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck), print_blob=False,
              phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])
    @given(strategy)
    def prop(drawn):
        key = repr(drawn)
        if first_failure and key not in failing and \
                time.perf_counter() - first_failure[0] > shrink_seconds:
            return
        try:
            began = time.perf_counter()
            body(drawn)
            took = (time.perf_counter() - began) * 1000
            if deadline is not None and took > deadline:
                raise CheckFailure(f"{report.spec}: a drawn case of the {report.check} check took "
                                   f"{took:.0f} ms, over the deadline of {deadline} ms; give a "
                                   "larger deadline (`nldsl test --deadline MS`) or None")
        except HypothesisException:
            raise
        except Exception as err:
            failing.add(key)
            first_failure[:] = first_failure or [time.perf_counter()]
            if isinstance(err, (CheckFailure, NLDSLError)):
                raise
            raise CheckFailure(f"{report.spec}: {type(err).__name__}: {err}\n  raised by the compiled "
                               f"spec (or the check) on a case inside the declared ranges:\n"
                               f"  {drawn}") from err
        report.examples += 1             # a draw the body discards (hypothesis.assume) is not counted

    report.examples = 0
    prop()
    report.seconds = time.perf_counter() - start
    return report


def scale_of(*tensors) -> float:
    """The largest finite magnitude among the tensors (1 if none: an absolute floor)."""
    values = [t.detach().abs()[torch.isfinite(t)].max().item() for t in tensors
              if isinstance(t, torch.Tensor) and torch.isfinite(t).any()]
    return max(values + [1.0])


def mismatch(got: torch.Tensor, want: torch.Tensor, tol: float, scale: float) -> str | None:
    """None when got and want agree (every entry within tol * scale; equal entries, infinities
    included, and NaN where both are NaN agree), else a description of the worst entry."""
    got, want = torch.as_tensor(got).detach(), torch.as_tensor(want).detach()
    if got.shape != want.shape:
        return f"shapes differ: {list(got.shape)} vs {list(want.shape)}"
    both_nan = torch.isnan(got) & torch.isnan(want)
    diff = torch.where(both_nan, torch.zeros_like(got), (got - want).abs())
    diff = torch.where(got == want, torch.zeros_like(diff), diff)       # equal infinities too
    diff = torch.where(torch.isnan(diff), torch.full_like(diff, float("inf")), diff)
    if diff.numel() == 0 or diff.max().item() <= tol * scale:
        return None
    worst = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
    return (f"largest difference {diff.max().item():.3e} at index {list(worst)} "
            f"(allowed {tol * scale:.3e} = {tol:.1e} x scale {scale:.3g}): "
            f"{got[worst].item():.10g} vs {want[worst].item():.10g}")


def show(value, width: int = 6) -> str:
    """A tensor or number, short: small tensors in full (rounded), larger ones summarised."""
    if not isinstance(value, torch.Tensor):
        return repr(value)
    value = value.detach()
    if value.numel() <= width * width:
        rounded = torch.round(value.double() * 1e4) / 1e4
        return f"{list(value.shape)} {rounded.tolist()}"
    return (f"{list(value.shape)} {value.dtype}, mean {value.double().mean().item():.4g}, "
            f"max |.| {value.abs().max().item():.4g}")


def flat_outputs(y: torch.Tensor, state: dict) -> dict:
    """A module call's results by name: "out" and every tensor of the fast state, detached."""
    values = {"out": y.detach()}
    values.update({f"state[{lv!r}][{n!r}]": v.detach() for lv, own in state.items()
                   for n, v in own.items() if isinstance(v, torch.Tensor)})
    return values


def fail(title: str, lines: list[str]) -> None:
    raise CheckFailure("\n".join([title] + ["  " + line for line in lines]))
