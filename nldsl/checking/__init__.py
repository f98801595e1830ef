"""Property checks for any spec, the ones the suite runs on the standard library (docs/testing.md).

    from nldsl.checking import check_derivations, check_schedules, check_twin, check_invariants

    check_derivations("my_memory.nl")            # derived updates == the rule's autograd step
    check_schedules("my_memory.nl")              # chunked == reference (fused == reference)
    check_twin("my_adam.nl", torch.optim.Adam)   # the spec == a torch optimizer, resumed halfway
    check_invariants("my_memory.nl")             # causality, carried state, state_dict, seeds
    check_equivalent("my_memory.nl", "my_memory_by_hand.nl")   # two specs, one module

Each draws its cases with hypothesis (hyper-parameters inside their declared ranges, small
dimensions, float64 tensors) under a budget (`examples`, `deadline` in ms, `seed`), returns a
`Report`, and raises `CheckFailure` (an AssertionError) with the first counterexample written
out. The strategies are public for properties of your own: `hparams(spec)`,
`tensors_for(spec, level)`, `streams(spec)`. `nldsl test SPEC...` runs the checks from the
command line (cli.py). Needs `hypothesis` (the `test` extra).
"""
from nldsl.checking import report
from nldsl.checking.derivations import check_derivations
from nldsl.checking.equivalence import check_equivalent
from nldsl.checking.invariants import check_invariants
from nldsl.checking.report import CheckFailure, Report
from nldsl.checking.schedules import check_schedules
from nldsl.checking.strategies import Stream, Unit, hparams, streams, tensors_for
from nldsl.checking.twin import check_twin

__all__ = ["CheckFailure", "Report", "Stream", "Unit", "check_derivations", "check_equivalent",
           "check_invariants", "check_schedules", "check_twin", "hparams", "streams", "tensors_for"]
