"""check_derivations: every update rule the compiler derived equals the rule's step on the
autograd gradient of the objective it came from, at drawn states, contexts and hyper-parameters.

Optimizers (optimizer_units.py): the closed-form writes of the plan (`derive.py`'s table: Hebbian,
delta rule, EMAs, orthogonality, cubic Newton-Schulz, ...). Modules (module_units.py): every
gradient and momentum write of the Program; a closed form is checked against autograd, and an
autograd write still has its rule (lr, decay, beta, momentum buffer) checked. Writes that are no
gradient step (the quintic Newton-Schulz polynomial, `solve`) are listed as not checked.

Tolerance. Both sides compute the same real number from the same float64 inputs by different
sequences of operations, so they differ by rounding only. An entry of a derived update is a sum
of at most 4^3 = 64 products (matrix products of factors at most 4 wide, three deep for
`orthogonality`), each product at most 2^6 times the scale (the largest magnitude among the state
before and after: the drawn values are standard normal), and each of the <= 2 x 64 roundings
changes it by at most 2^-53 relative: |difference| <= 2^13 * 2^-53 * scale. A wrong formula
(a dropped term, a transposed key, a missing 1/2 or lr) differs by O(scale).
"""
from __future__ import annotations

from nldsl.checking import module_units, optimizer_units
from nldsl.checking.report import EPS64, Report, fail, mismatch, not_applicable, run_property, \
    scale_of, show
from nldsl.checking.strategies import spec_of, tensors_for

TOLERANCE = 2 ** 13 * EPS64


def derived_writes(spec) -> list[tuple[str, str, str]]:
    """(level, state, derivation) of every derived write at the defaults (dims set to 2)."""
    from nldsl.language.consteval import hparam_values

    values = hparam_values(spec.decl)
    values.update({h.name: 2 for h in spec.decl.hparams if h.name not in values})
    if spec.kind == "optimizer":
        plan, _ = optimizer_units.optimizer_plan(spec, values)
        return [(lv.name, w.target, w.derivation) for lv, w in optimizer_units.closed_form_writes(plan)]
    from nldsl.lower.module import lower_module
    from nldsl.module.checks import resolve_hparams

    program = lower_module(spec, resolve_hparams(spec, values))
    return [(lv.name, w.target, w.derivation) for lv in program.levels for w in lv.writes
            if w.kind != "explicit"]


def check_derivations(spec, level: str | None = None, examples: int = 25, deadline=None,
                      seed: int = 0, fixed: dict | None = None) -> Report:
    """Draw `examples` units (hyper-parameters inside their ranges, `fixed` ones as given) and
    compare every derived write of `level` (all levels when None) with the autograd step. Raises
    CheckFailure with the first (shrunk) counterexample; returns a Report."""
    spec = spec_of(spec)
    report = Report("derivations", spec.name)
    strategy = tensors_for(spec, level, fixed)          # an unknown level is a ValueError here
    writes = [w for w in derived_writes(spec) if level is None or w[0] == level]
    if not writes:
        where = f"level {level}" if level else spec.name
        return not_applicable("derivations", spec.name, f"{where} has no derived update rule")
    units = module_units if spec.kind == "module" else optimizer_units
    checked, skipped = set(), set()

    def body(unit):
        for c in units.compare_writes(spec, unit):
            if level is not None and c.level != level:
                continue
            if c.expected is None:
                skipped.add(f"{c.target}: {c.derivation}")
                continue
            rule_only = " (rule only: no closed form)" if c.derivation.endswith("autograd") else ""
            checked.add(f"{c.target}: {c.derivation}{rule_only}")
            _compare(spec, c)

    run_property(report, strategy, body, examples, deadline, seed)
    report.checked = sorted(checked) + [f"{s} (not a gradient step: not checked)" for s in sorted(skipped)]
    if not checked:
        report.status, report.reason = "not applicable", "; ".join(report.checked)
    return report


def _compare(spec, c) -> None:
    scale = scale_of(*c.scale_inputs, *c.expected.values())
    for name, want in c.expected.items():
        got = c.compiled[name]
        problem = mismatch(got, want, TOLERANCE, scale)
        if problem is None:
            continue
        what = c.target if name == "state" else f"{c.target}'s {name} buffer"
        fail(f"{spec.name}: the derived update of {what} (level {c.level}, {c.derivation}) is "
             "not the rule's step on the autograd gradient of its objective",
             [f"derived:   {c.formula}", problem]
             + [f"{k} = {show(v)}" for k, v in c.inputs.items()]
             + [f"derived {what} after the step = {show(got)}",
                f"autograd {what} after the step = {show(want)}"])
