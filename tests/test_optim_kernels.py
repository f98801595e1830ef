"""Newton-Schulz, per matrix and per group: eq. 44's gradient steps (cubic), torch.optim.Muon's
own iteration (quintic), and the batched group kernel against both."""
import pytest
import torch
from torch.func import grad as func_grad
from torch.optim._muon import _zeropower_via_newtonschulz

from nldsl.optim import kernels
from nldsl.optim.kernels import newton_schulz, newton_schulz_group

SHAPES = {"square 4x4": (4, 4), "wide 3x8": (3, 8), "tall 9x2": (9, 2), "odd wide 5x7": (5, 7),
          "odd tall 13x6": (13, 6), "row 1x6": (1, 6), "column 6x1": (6, 1)}
MUON = (3.4445, -4.7750, 2.0315)


def matrices(shape, count=1, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen, dtype=dtype) for _ in range(count)]


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_cubic_is_gradient_descent_on_orthogonality_with_zeta_a_quarter(shape, steps):
    """eq. 44 (orthogonality term, zeta = 1/4): O <- O - 1/4 grad 1/2 ||O^T O - I||^2 from
    O_0 = X / ||X||_F; the gradient by autograd, the kernel by its polynomial (3/2, -1/2)."""
    (x,) = matrices(shape, dtype=torch.float64)
    o = x / x.norm()
    for _ in range(steps):
        o = o - 0.25 * func_grad(kernels.orthogonality)(o)
    torch.testing.assert_close(newton_schulz(x, steps, "cubic", precision="float64"), o)


@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_quintic_is_torch_muons_iteration_bit_for_bit(shape, steps):
    for x in matrices(shape, count=3, seed=steps):
        expected = _zeropower_via_newtonschulz(x, MUON, steps, 1e-7)
        assert torch.equal(newton_schulz(x, steps, MUON, 1e-7, "bfloat16"), expected.float())


GROUPS = {"3 square 6x6": (3, (6, 6)), "4 wide 5x9": (4, (5, 9)), "2 tall 11x4": (2, (11, 4)),
          "1 odd 7x3": (1, (7, 3))}


@pytest.mark.parametrize("count, shape", GROUPS.values(), ids=GROUPS.keys())
def test_group_equals_each_matrix_up_to_the_order_of_float64_sums(count, shape):
    xs = matrices(shape, count, dtype=torch.float64)
    for got, x in zip(newton_schulz_group(xs, 5, MUON, 1e-7, "float64"), xs):
        torch.testing.assert_close(got, newton_schulz(x, 5, MUON, 1e-7, "float64"), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("precision", ["bfloat16", "float32"])
@pytest.mark.parametrize("count, shape", GROUPS.values(), ids=GROUPS.keys())
def test_group_is_as_accurate_as_each_matrix_alone(count, shape, precision):
    """Batched products round differently from per-matrix ones (in bfloat16 a one-ulp
    difference early in the iteration can grow by the polynomial's slope, up to a = 3.44 per
    step), so the group is checked for accuracy: its distance to the float64 iteration is at
    most twice the per-matrix one's, plus one rounding of `precision`."""
    unit = {"bfloat16": 2 ** -8, "float32": 2 ** -24}[precision]
    for seed in range(5):
        xs = matrices(shape, count, seed)
        for got, x in zip(newton_schulz_group(xs, 5, MUON, 1e-7, precision), xs):
            exact = newton_schulz(x.double(), 5, MUON, 1e-7, "float64")
            alone = newton_schulz(x, 5, MUON, 1e-7, precision)
            assert (got - exact).norm() <= 2 * (alone - exact).norm() + unit * exact.norm()


def test_large_cpu_matrices_are_orthogonalised_one_by_one():
    """Above CPU_BATCH_MAX_ELEMENTS a CPU runs each matrix alone (torch's own arithmetic)."""
    rows = kernels.CPU_BATCH_MAX_ELEMENTS // 512 + 1
    xs = matrices((rows, 512), count=2)
    for got, x in zip(newton_schulz_group(xs, 2, MUON, 1e-7, "bfloat16"), xs):
        assert torch.equal(got, newton_schulz(x, 2, MUON, 1e-7, "bfloat16"))


@pytest.mark.parametrize("call, message", [
    pytest.param(lambda: newton_schulz(torch.ones(3)), "needs a matrix", id="vector"),
    pytest.param(lambda: newton_schulz(torch.ones(2, 3, 4)), "needs a matrix", id="3-d tensor"),
    pytest.param(lambda: newton_schulz_group([torch.ones(2, 3), torch.ones(3, 2)]), "one shape",
                 id="group of two shapes"),
    pytest.param(lambda: newton_schulz_group([torch.ones(3)]), "one shape", id="group of vectors"),
    pytest.param(lambda: newton_schulz_group([]), "one shape", id="empty group"),
    pytest.param(lambda: newton_schulz(torch.ones(2, 2), polynomial="septic"), "polynomial must be",
                 id="unknown polynomial"),
])
def test_misuse_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
