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
from importlib import import_module

#: Public name -> the module that defines it. Imported on first use (PEP 562), so that
#: `nldsl test --help` and `import nldsl.checking.cli` load neither torch nor hypothesis.
_HOMES = {
    "check_derivations": "derivations", "check_equivalent": "equivalence",
    "check_invariants": "invariants", "check_schedules": "schedules", "check_twin": "twin",
    "CheckFailure": "report", "Report": "report",
    "Stream": "strategies", "Unit": "strategies", "hparams": "strategies",
    "streams": "strategies", "tensors_for": "strategies",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'nldsl.checking' has no attribute {name!r}")
    value = getattr(import_module(f"nldsl.checking.{_HOMES[name]}"), name)
    globals()[name] = value
    return value
