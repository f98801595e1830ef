"""Newton-Schulz, per matrix and per group: eq. 44's gradient steps (cubic), torch.optim.Muon's
own iteration (quintic), and the batched group kernel against both."""
import pytest
import torch
from torch.func import grad as func_grad
from torch.optim._muon import _zeropower_via_newtonschulz

from nldsl.optim import kernels
from nldsl.optim.kernels import newton_schulz, newton_schulz_group
from nldsl.testing import newton_schulz_error_bound

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
    O_0 = X / ||X||_F; the gradient by autograd, the kernel by its polynomial (3/2, -1/2). Both in
    float64, the same polynomial in another order: each within `newton_schulz_error_bound`
    (cubic, float64: under 1e-13) of the exact steps, far inside assert_close's float64 default
    (1e-7)."""
    (x,) = matrices(shape, dtype=torch.float64)
    o = x / x.norm()
    for _ in range(steps):
        o = o - 0.25 * func_grad(kernels.orthogonality)(o)
    torch.testing.assert_close(newton_schulz(x, steps, "cubic", precision="float64"), o)


@pytest.mark.parametrize("steps", [1, 5])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_quintic_is_torch_muons_iteration_bit_for_bit(shape, steps):
    """Bit for bit is a claim about the same operations on the same tensors: the kernel is
    written op for op as torch.optim.Muon's `_zeropower_via_newtonschulz`."""
    for x in matrices(shape, count=3, seed=steps):
        expected = _zeropower_via_newtonschulz(x, MUON, steps, 1e-7)
        assert torch.equal(newton_schulz(x, steps, MUON, 1e-7, "bfloat16"), expected.float())


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "float64"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_the_result_depends_on_the_values_not_the_layout(shape, precision):
    """A transposed view (a tall matrix's own result is one) is orthogonalised as its contiguous
    copy, bit for bit: the products' rounding depends on their operands' strides (float32: 6e-7
    apart on a 5x2 matrix, which the optimizer fuzzer found as fused and reference schedules
    disagreeing on newton_schulz of a stored newton_schulz result)."""
    for x in matrices(shape, count=2, dtype=torch.float64):
        view = x.mT.contiguous().mT                                     # x's values, transposed strides
        assert not view.is_contiguous() or min(shape) == 1
        assert torch.equal(newton_schulz(view, 5, MUON, 1e-7, precision),
                           newton_schulz(x, 5, MUON, 1e-7, precision))


GROUPS = {"3 square 6x6": (3, (6, 6)), "4 wide 5x9": (4, (5, 9)), "2 tall 11x4": (2, (11, 4)),
          "1 odd 7x3": (1, (7, 3))}


@pytest.mark.parametrize("count, shape", GROUPS.values(), ids=GROUPS.keys())
def test_group_equals_each_matrix_up_to_the_order_of_float64_sums(count, shape):
    """In float64 batched and per-matrix products differ only in summation order: each is within
    `newton_schulz_error_bound` (float64: 2e-11 for these shapes) of the exact iteration, so
    they are within twice that of each other."""
    bound = newton_schulz_error_bound(shape, 5, MUON, "float64")
    xs = matrices(shape, count, dtype=torch.float64)
    for got, x in zip(newton_schulz_group(xs, 5, MUON, 1e-7, "float64"), xs):
        assert (got - newton_schulz(x, 5, MUON, 1e-7, "float64")).norm() <= 2 * bound


@pytest.mark.parametrize("count, shape", GROUPS.values(), ids=GROUPS.keys())
def test_group_in_float32_is_within_the_rounding_bound_of_the_exact_iteration(count, shape):
    """The float64 iteration stands for the exact one (its own error, 2e-11, is negligible).
    The group and each matrix alone are within `newton_schulz_error_bound` (float32: 7e-3 to
    1.3e-2 here, its derivation in nldsl.testing) of it. Measured: 1e-6 to 4e-6 (up to 40 u,
    with ATEN_CPU_CAPABILITY=default too); the group's error is up to 4.6 times the matrix
    alone's, so no fixed ratio between the two is a property of the arithmetic."""
    bound = newton_schulz_error_bound(shape, 5, MUON, "float32")
    for seed in range(5):
        xs = matrices(shape, count, seed)
        for got, x in zip(newton_schulz_group(xs, 5, MUON, 1e-7, "float32"), xs):
            exact = newton_schulz(x.double(), 5, MUON, 1e-7, "float64")
            alone = newton_schulz(x, 5, MUON, 1e-7, "float32")
            assert (got - exact).norm() <= bound
            assert (alone - exact).norm() <= bound


@pytest.mark.parametrize("count, shape", GROUPS.values(), ids=GROUPS.keys())
def test_group_in_bfloat16_is_as_accurate_as_each_matrix_alone(count, shape):
    """In bfloat16 the rounding bound exceeds the result itself, so accuracy is compared
    instead. Each bfloat16 product accumulates in float32 and rounds its result to 8 bits once:
    batched and per-matrix summation orders differ by k 2^-24 relative (k <= 11 here), far below
    the 2^-9 of that rounding, so both round alike except near a tie (measured here: equal, on
    both arithmetic paths). The group's distance to the float64 iteration is at most twice the
    per-matrix one's plus one bfloat16 rounding (2^-8) of the result's size, ||exact||_F, which
    covers a tie flipped at the last step."""
    for seed in range(5):
        xs = matrices(shape, count, seed)
        for got, x in zip(newton_schulz_group(xs, 5, MUON, 1e-7, "bfloat16"), xs):
            exact = newton_schulz(x.double(), 5, MUON, 1e-7, "float64")
            alone = newton_schulz(x, 5, MUON, 1e-7, "bfloat16")
            assert (got - exact).norm() <= 2 * (alone - exact).norm() + 2 ** -8 * exact.norm()


def test_large_cpu_matrices_are_orthogonalised_one_by_one():
    """Above CPU_BATCH_MAX_ELEMENTS a CPU runs each matrix alone: the same operations as
    `newton_schulz`, so equal bit for bit."""
    rows = kernels.CPU_BATCH_MAX_ELEMENTS // 512 + 1
    xs = matrices((rows, 512), count=2)
    for got, x in zip(newton_schulz_group(xs, 2, MUON, 1e-7, "bfloat16"), xs):
        assert torch.equal(got, newton_schulz(x, 2, MUON, 1e-7, "bfloat16"))


@pytest.mark.parametrize("call, message", [
    pytest.param(lambda: newton_schulz(torch.ones(3)), "needs a matrix", id="vector"),
    pytest.param(lambda: newton_schulz(torch.ones(2, 3, 4)), "needs a matrix", id="3-d tensor"),
    pytest.param(lambda: newton_schulz_group([torch.ones(2, 3), torch.ones(3, 2)]), "one shape",
                 id="group of two shapes"),
    pytest.param(lambda: newton_schulz_group([torch.ones(3)]), "needs matrices", id="group of vectors"),
    pytest.param(lambda: newton_schulz_group([]), "one shape", id="empty group"),
    pytest.param(lambda: newton_schulz(torch.ones(2, 2), polynomial="septic"), "polynomial must be",
                 id="unknown polynomial"),
])
def test_misuse_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("op, pick", [(kernels.maximum, max), (kernels.minimum, min)],
                         ids=["max", "min"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_a_number_beside_a_tensor_takes_the_tensors_dtype(op, pick, dtype):
    """max(W, 0.01) with a float64 W is float64's 0.01 where it wins: torch.as_tensor made the
    number a float32 0-d tensor, 2.2e-10 off (the reference schedule's value beside the fused
    code's, found by tests/test_fuzz_optim.py)."""
    w = torch.tensor([0.001, 0.5, -1.0], dtype=dtype)
    got = op(w, 0.01)
    want = torch.tensor([pick(float(v), 0.01) for v in w.tolist()], dtype=dtype)
    assert got.dtype == dtype and torch.equal(got, want)
    assert torch.equal(op(0.01, w), want)
