"""The fused-op rewrite table (nldsl/lower/rewrites.py): which shapes it rewrites, and that the
optimizer's two readers of it, the printer (fused schedule) and the evaluator (reference
schedule), compute each one to the same bit."""
import pytest
import torch

import nldsl
from nldsl.language import ast
from nldsl.lower import rewrites
from nldsl.language.parser import parse

#: Names that are tensors below; every other name is a number.
TENSORS = {"a", "b", "t", "d", "s"}


def expr(text: str) -> ast.Expr:
    decl = parse("optimizer o() { level w every 1 step { W <- %s } }" % text, "o")
    return decl.levels[0].items[0].value


def is_tensor(e: ast.Expr) -> bool:
    """A tensor when it names one of TENSORS, or combines one (as the evaluator would find)."""
    if isinstance(e, ast.Name):
        return e.id in TENSORS
    if isinstance(e, ast.Binary):
        return is_tensor(e.left) or is_tensor(e.right)
    if isinstance(e, ast.Call):
        return any(is_tensor(arg) for arg in e.args)
    return False


def rewrite(e: ast.Expr):
    of = rewrites.of_sqrt if isinstance(e, ast.Call) else rewrites.of_sum
    return of(e, is_tensor)


SHAPES = {
    "lerp": ("a + w * (b - a)", "lerp", ("a", "b", "w")),
    "add with alpha": ("a - n * b", "add", ("a", "b")),
    "add with alpha, not a lerp from another start": ("a + w * (b - t)", "add", ("a", "b - t")),
    "addcmul": ("a + s * b", "addcmul", ("a", "s", "b")),
    "addcdiv": ("a - n * t / d", "addcdiv", ("a", "t", "d")),
    "addcdiv, coefficient on the right": ("a + t * n / d", "addcdiv", ("a", "t", "d")),
    "sqrt of a quotient": ("sqrt(a / n)", "sqrt_div", ("a", "n")),
}


@pytest.mark.parametrize("text, op, args", SHAPES.values(), ids=SHAPES.keys())
def test_each_shape_is_its_op(text, op, args):
    match = rewrite(expr(text))
    assert match.op == op and match.args == tuple(expr(a) for a in args)


NOT_REWRITTEN = {
    "lerp with a tensor weight (nor addcmul)": "a + s * (b - a)",
    "product of numbers": "a + n * w",
    "quotient without a tensor numerator": "a + n / d",
    "sqrt of a tensor denominator": "sqrt(n / a)",
    "a product, not a sum": "a * n * b",
}


@pytest.mark.parametrize("text", NOT_REWRITTEN.values(), ids=NOT_REWRITTEN.keys())
def test_other_shapes_are_left_to_the_plain_ops(text):
    assert rewrite(expr(text)) is None


def test_an_unknown_kind_counts_as_no_tensor_and_no_number():
    """The printer cannot tell what `b if flag else n` is: add's s must be a number for certain,
    addcmul's a tensor for certain."""
    unknown = lambda e: None if isinstance(e, ast.Conditional) else is_tensor(e)
    assert rewrites.of_sum(expr("a + (b if f else n) * b"), unknown) is None


def test_the_coefficient_keeps_the_spec_order():
    """`n1 * (t / n2)` is n1 * (1 / n2), not (n1 * 1) / n2: they round differently."""
    match = rewrite(expr("a - n1 * (t / n2) / d"))
    assert match.scale == rewrites.Times(expr("n1"), rewrites.Then(None, "/", expr("n2")))


#: Coefficients both schedules compute alike (lr, c below make the groupings of a quotient
#: differ). `lr * (g / c)`, stdlib adam's `lr * (m / bc1)`, they do not: generated code prints it
#: `lr * (1) / c` (torch Adam's lr / bc1), the reference computes lr * (1 / c) (docs/optimizers.md).
COEFFICIENTS = {
    "quotient then a number": "grad(W) / c * lr",
    "number times a product": "lr * (c * grad(W))",
    "number on the right of a product": "grad(W) * c * lr",
}


@pytest.mark.parametrize("scaled", COEFFICIENTS.values(), ids=COEFFICIENTS.keys())
def test_fused_and_reference_compute_a_coefficient_alike(scaled):
    assert (0.84 * 1) / 0.76 != 0.84 * (1 / 0.76)           # the groupings differ here
    spec = nldsl.load("optimizer o(lr = 0.84 > 0, c = 0.76 > 0) {\n  level w every 1 step {\n"
                      f"    W <- W - {scaled} / (grad(W) * grad(W) + 1)\n  }}\n}}\n")
    result = {}
    for schedule in ("reference", "fused"):
        gen = torch.Generator().manual_seed(0)
        p = torch.nn.Parameter(torch.randn(257, generator=gen, dtype=torch.float64))
        opt = nldsl.optimizer(spec, [p], schedule)
        for _ in range(3):
            p.grad = torch.randn(257, generator=gen, dtype=torch.float64)
            opt.step()
        result[schedule] = p.detach()
    assert torch.equal(result["reference"], result["fused"])
