"""check_equivalent: a hand-derived Huber delta rule equals the objective's autograd step; one
that clips at 1 instead of delta is caught at a drawn delta; bad pairs are refused."""
import pytest

from nldsl.checking import CheckFailure, check_equivalent
from nldsl.errors import NLDSLError

OBJECTIVE = "examples/huber_delta.nl"


pytestmark = pytest.mark.usefixtures("quick_shrinking")


def test_the_hand_derived_huber_update_equals_the_objective():
    result = check_equivalent(OBJECTIVE, "examples/huber_delta_explicit.nl", examples=6)
    assert result.status == "pass" and result.examples == 6


def test_a_hand_derivation_that_ignores_delta_is_found():
    with pytest.raises(CheckFailure) as failure:
        check_equivalent(OBJECTIVE, "examples/huber_delta_wrong.nl", examples=10)
    text = str(failure.value)
    assert text.startswith("huber_delta and huber_delta_wrong differ in state['memory']['M']")
    assert "'delta': 1.0}" not in text          # the clip at 1 is right for delta = 1 only
    assert "x = [" in text and "huber_delta_wrong: state['memory']['M'] = [" in text


def test_optimizers_are_refused():
    with pytest.raises(NLDSLError, match="check_equivalent compares module specs; adam is an optimizer"):
        check_equivalent("adam", OBJECTIVE)


def test_specs_with_other_hyper_parameters_are_refused():
    with pytest.raises(NLDSLError, match=r"must declare the same hyper-parameters: \['decay', 'delta', 'lr'\]"):
        check_equivalent(OBJECTIVE, "linear_attention")
