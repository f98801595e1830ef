"""check_twin: the stdlib twins match torch (with a state_dict reload mid-run), a user's spec
with a wrong weight decay is caught, hyper-parameters can be renamed, bad input is refused."""
import pytest
import torch

from nldsl.checking import CheckFailure, check_twin
from nldsl.errors import NLDSLError


pytestmark = pytest.mark.usefixtures("quick_shrinking")


TWINS = {
    "sgd": ("sgd", torch.optim.SGD, 6),
    "adam": ("adam", torch.optim.Adam, 6),
    "adagrad": ("adagrad", torch.optim.Adagrad, 4),
    "muon (bfloat16 Newton-Schulz, op for op)": ("muon", torch.optim.Muon, 2),
}


@pytest.mark.parametrize("name, torch_cls, examples", TWINS.values(), ids=TWINS.keys())
def test_stdlib_twins_match_torch(name, torch_cls, examples):
    result = check_twin(name, torch_cls, examples=examples)
    assert result.status == "pass" and result.examples == examples


MY_SGD = """
optimizer my_sgd(rate = 1e-3 >= 0, weight_decay = 0 >= 0) {
  level weights every 1 step {
    key g = grad(W) %s weight_decay * W
    W: minimize dot(W, g) by gd(rate)
  }
}
"""


def test_renamed_hyper_parameters_reach_torch():
    result = check_twin(MY_SGD % "+", torch.optim.SGD, {"rate": "lr", "weight_decay": "weight_decay"},
                        examples=4)
    assert result.status == "pass"


def test_a_wrong_weight_decay_sign_is_found():
    with pytest.raises(CheckFailure) as failure:
        check_twin(MY_SGD % "-", torch.optim.SGD, {"rate": "lr", "weight_decay": "weight_decay"},
                   examples=10)
    text = str(failure.value)
    assert text.startswith("my_sgd and SGD differ at step 1 in parameter")
    assert "(torch: {'lr': " in text and "state_dict reloaded before step" in text


def test_a_module_spec_is_refused():
    with pytest.raises(NLDSLError, match="check_twin compares optimizers; linear_attention is a module"):
        check_twin("linear_attention", torch.optim.SGD)


def test_a_twin_that_is_not_an_optimizer_class_is_refused():
    with pytest.raises(TypeError, match="needs a torch.optim.Optimizer class"):
        check_twin("sgd", torch.nn.Linear)


def test_a_kwarg_map_naming_no_hyper_parameter_is_refused():
    with pytest.raises(NLDSLError, match="kwarg_map names learning_rate, which sgd does not declare"):
        check_twin("sgd", torch.optim.SGD, {"learning_rate": "lr"})
