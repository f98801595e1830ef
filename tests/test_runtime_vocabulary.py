"""Every built-in of the vocabulary is computed by the module runtime or rejected, located, by
the module compiler: nothing validates and then fails inside a module's forward pass. The
runtime's tables hold exactly the built-ins of their shape class (nldsl/language/builtins.py), and each
function gives the value dims its class says."""
import math

import pytest
import torch

from nldsl.language.builtins import FUNCTIONS, LAST_DIM_SHAPES, shaped
from nldsl.lower.unsupported import UNSUPPORTED_CALLS
from nldsl.runtime import functions as fn
from nldsl.runtime.evaluate import COMPUTED


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_builtin_is_computed_or_rejected(name):
    is_init = FUNCTIONS[name].role == "init"
    assert (name in COMPUTED) + (name in UNSUPPORTED_CALLS) + is_init == 1


def test_runtime_tables_are_exactly_their_shape_classes():
    assert set(fn.ELEMENTWISE) == set(shaped("elementwise"))
    assert set(fn.LAST_DIM) == set(shaped(*LAST_DIM_SHAPES))
    assert set(fn.ELEMENTWISE) | set(fn.LAST_DIM) <= COMPUTED


#: What each shape class makes of value dims [3, 4] (docs: builtins.SHAPES).
EXPECTED_DIMS = {"elementwise": (3, 4), "last_dim_keep": (3, 4), "last_dim_reduce": (3, 1),
                 "transpose": (4, 3), "trace": ()}


@pytest.mark.parametrize("name", shaped("elementwise", *LAST_DIM_SHAPES))
def test_runtime_functions_give_the_dims_of_their_shape_class(name):
    a = torch.rand(2, 3, 4, dtype=torch.float64) + 0.5          # batch 2; value dims [3, 4]
    if name == "trace":
        a = a[..., :3]                                          # a square matrix [3, 3]
    value = fn.ELEMENTWISE[name][0](a) if name in fn.ELEMENTWISE else fn.LAST_DIM[name](a)
    assert tuple(value.shape[1:]) == EXPECTED_DIMS[FUNCTIONS[name].shape]


@pytest.mark.parametrize("name", shaped("elementwise"))
def test_elementwise_functions_agree_on_tensors_and_numbers(name):
    on_tensor, on_number = fn.ELEMENTWISE[name]
    for x in (-1.5, 0.25, 2.0):
        if name in ("sqrt", "log") and x < 0:
            continue
        expected = on_tensor(torch.tensor(x, dtype=torch.float64)).item()
        assert math.isclose(on_number(x), expected, rel_tol=1e-12, abs_tol=1e-15)


def test_flatten_and_concat_in_a_per_head_frame():
    """Atlas' polynomial features: flatten(outer(k, k)) is vec(k k^T) row by row, [B, H, d^2],
    and concat joins vectors of different widths, [B, H, d + d^2]."""
    from nldsl.language import ast
    from nldsl.runtime.evaluate import FrameEvaluator
    from nldsl.runtime.frame import Frame

    k = torch.rand(2, 3, 4, dtype=torch.float64)                # [B, H, d]
    name = lambda n: ast.Name(id=n)
    call = lambda f, *args: ast.Call(func=f, args=list(args))
    evaluate = FrameEvaluator(Frame(1, 3), {"k": k}.__getitem__, None, None)
    flat = evaluate(call("flatten", call("outer", name("k"), name("k"))))
    assert torch.equal(flat, (k[..., :, None] * k[..., None, :]).reshape(2, 3, 16))
    joined = evaluate(call("concat", name("k"), call("flatten", call("outer", name("k"), name("k")))))
    assert torch.equal(joined, torch.cat([k, flat], -1))


def test_a_number_beside_a_float64_value_is_float64():
    """max(x, 0.01) in a float64 module: the number is float64's 0.01 (it was the default
    dtype's, float32's, 2.2e-10 off)."""
    from nldsl.language import ast
    from nldsl.runtime.evaluate import FrameEvaluator
    from nldsl.runtime.frame import Frame

    x = torch.tensor([[0.001, 0.5]], dtype=torch.float64)                  # [B, d]
    evaluate = FrameEvaluator(Frame(1), {"x": x}.__getitem__, None, None)
    got = evaluate(ast.Call(func="max", args=[ast.Name(id="x"), ast.Number(value=0.01)]))
    assert got.dtype == torch.float64 and got[0, 0].item() == 0.01 and got[0, 1].item() == 0.5
