"""The strategies draw inside the spec's declared ranges, keep dimensions small, and are
composable in a user's own properties."""
import pytest
from hypothesis import given, settings

from nldsl import load
from nldsl.validation.values import satisfies
from nldsl.checking import hparams, streams, tensors_for
from nldsl.checking.strategies import dimensions

SPECS = ["adam", "sgd", "muon", "linear_attention", "examples/huber_delta.nl"]


@pytest.mark.parametrize("name", SPECS)
def test_drawn_hyper_parameters_satisfy_every_declared_constraint(name):
    spec = load(name)

    @settings(max_examples=30, deadline=None, database=None)
    @given(hparams(spec))
    def check(values):
        assert set(values) == {h.name for h in spec.decl.hparams}
        for h in spec.decl.hparams:
            assert all(satisfies(values[h.name], c, values) is not False for c in h.constraints)
        for name in dimensions(spec):
            assert 2 <= values[name] <= 4

    check()


def test_dimensions_are_the_hyper_parameters_that_size_states_or_count_heads():
    assert dimensions(load("linear_attention")) == {"dim", "heads", "head_dim"}
    assert dimensions(load("adam")) == set()


def test_tuples_without_a_range_are_held_and_choices_drawn_from():
    @settings(max_examples=20, deadline=None, database=None)
    @given(hparams("muon"))
    def check(values):
        assert values["ns_coefficients"] == (3.4445, -4.7750, 2.0315)
        assert values["adjust_lr_fn"] in ("original", "match_rms_adamw")
        assert 0 <= values["lr"] <= 2e-3

    check()


def test_fixed_values_are_kept():
    @settings(max_examples=5, deadline=None, database=None)
    @given(tensors_for("adam", fixed={"amsgrad": True}), streams("linear_attention", {"heads": 2}))
    def check(unit, stream):
        assert unit.hparams["amsgrad"] is True and stream.hparams["heads"] == 2
        assert 1 <= unit.step <= 8 and all(1 <= n <= 4 for n in unit.shape)
        assert 0 <= stream.cut <= stream.length <= 12 and 1 <= stream.block_size <= 8

    check()


def test_held_values_must_name_a_hyper_parameter_inside_its_range():
    with pytest.raises(ValueError, match=r"(?s)adam has no hyper-parameter 'learning_rate'.*"
                                         r"expected: a hyper-parameter of adam: lr, betas"):
        hparams("adam", {"learning_rate": 0.1})
    with pytest.raises(ValueError, match=r"adam: lr = -1 is outside its declared range \(>= 0\)"):
        hparams("adam", {"lr": -1})


def test_nldsl_testing_re_exports_the_checks():
    """Issue 12 names them `nldsl.testing.*`; they are nldsl.checking's objects, not copies."""
    import nldsl.checking
    import nldsl.testing

    for name in nldsl.testing.CHECKS:
        assert getattr(nldsl.testing, name) is getattr(nldsl.checking, name)
