"""The demo's module table: one row per module spec of the stdlib, both schedules agreeing."""
from nldsl.library import stdlib_names
from nldsl.module.demo import module_rows
from nldsl.spec import load


def test_every_module_spec_has_a_row_and_compiled_ones_agree():
    rows = module_rows()
    modules = [name for name in stdlib_names() if load(name).kind == "module"]
    assert [row[0] for row in rows] == modules
    compiled = {row[0]: row for row in rows if not row[1].startswith("not yet")}
    assert {"linear_attention", "deltanet", "gated_deltanet"} <= set(compiled)
    for name in ("linear_attention", "deltanet", "gated_deltanet"):
        assert compiled[name][1] == "linear memory (WY/UT)"
    for name in ("titans", "yaad"):
        assert compiled[name][1] == "deep memory (chunk form)"
    # float32 over 256 tokens: outputs of size ~1 agree to a few hundred ulps of the schedules'
    # differently associated sums (2^-23 ~ 1.2e-7 per rounding, a 64-token block's sums)
    assert all(float(row[2]) < 1e-4 for row in compiled.values())
