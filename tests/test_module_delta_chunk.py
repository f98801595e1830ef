"""nldsl/module/delta_chunk.py: the block (WY/UT) form of

    S_t = a_t S_{t-1} - c_t k_t (k_t^T S_{t-1}) + k_t w_t^T,    y_t = S_t^T q_t  (or S_{t-1})

against a token loop written here (and the module's own `linear_delta_loop`), for block sizes
that divide T, that do not, 1 and > T; decays of exactly 0; no erase term (c None); gradients.
And the chunked schedule's one GEMM for a level's input projections (no gradients).
Tolerance: tests/_module_cases.rounding_bound, the same derivation as for the modules (unit
keys, 0 < c < 1, 0 <= a <= 1 keep the transition's norm <= 1).
"""
from __future__ import annotations

import pytest
import torch

import nldsl
from _module_cases import assert_close, rounding_bound
from nldsl.language import ast
from nldsl.language.consteval import children
from nldsl.module.chunked import _SequenceValues
from nldsl.module.delta_chunk import (decay_products, linear_delta_blocks, linear_delta_loop,
                                      unit_lower_inverse, unit_lower_solve)

B, H, DK, DV = 2, 3, 4, 5


def problem(steps, seed, erase=True, zeros=(), erase_zeros=False):
    """Random s0, a in (0.2, 1) (exactly 0 at `zeros`), c in (0, 1) (0 at `zeros` too with
    `erase_zeros`: Gated DeltaNet's c = alpha beta), unit k, w, q."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)
    u = lambda *shape: torch.rand(*shape, generator=g, dtype=torch.float64)
    s0 = r(B, H, DK, DV)
    a = 0.2 + 0.8 * u(B, H, steps)
    for t in zeros:
        a[..., t] = 0.0
    c = u(B, H, steps) if erase else None
    if erase and erase_zeros:
        c[..., list(zeros)] = 0.0
    k = torch.nn.functional.normalize(r(B, H, steps, DK), dim=-1)
    w, q = r(B, H, steps, DV), r(B, H, steps, DK)
    return s0, a, c, k, w, q


def loop(s0, a, c, k, w, queries):
    """The recurrence, token by token, as written in the module docstring."""
    s, outs = s0, [[] for _ in queries]
    for t in range(k.shape[2]):
        kt = k[:, :, t]                                              # [B, H, dk]
        erase = 0 if c is None else c[:, :, t, None, None] * torch.einsum(
            "bhk,bhj,bhjv->bhkv", kt, kt, s)
        new = a[:, :, t, None, None] * s - erase + torch.einsum("bhk,bhv->bhkv", kt, w[:, :, t])
        for out, (q, before) in zip(outs, queries):
            out.append(torch.einsum("bhkv,bhk->bhv", s if before else new, q[:, :, t]))
        s = new
    return [torch.stack(o, dim=2) for o in outs], s


def check(steps, block, seed=0, erase=True, zeros=(), erase_zeros=False, unit_decay=False,
          no_decay=False):
    s0, a, c, k, w, q = problem(steps, seed, erase, zeros, erase_zeros)
    if unit_decay or no_decay:
        a = torch.ones_like(a)                      # DeltaNet, linear attention: a = 1
    queries = [(q, False), (q, True)]
    ys, s_end = linear_delta_blocks(s0, None if no_decay else a, c, k, w, queries, block)
    with torch.no_grad():                       # the block pass into preallocated results
        ys_in_place, s_in_place = linear_delta_blocks(s0, None if no_decay else a, c, k, w,
                                                      queries, block)
    ys_loop, s_loop = loop(s0, a, c, k, w, queries)
    bound = rounding_bound(steps, max(DK, DV), block)
    for y, y_in_place, y_loop, what in zip(ys, ys_in_place, ys_loop, ("read", "read before write")):
        assert_close(y, y_loop, bound, what)
        assert_close(y_in_place, y_loop, bound, what + " (no grad)")
    assert_close(s_end, s_loop, bound, "S_T")
    assert_close(s_in_place, s_loop, bound, "S_T (no grad)")
    return ys, s_end


BLOCKS = [pytest.param(steps, block, id=f"T{steps}-block{block}") for steps, block in
          ((24, 1), (24, 8), (24, 24), (24, 7), (24, 32), (1, 4), (50, 16), (100, 64))]


@pytest.mark.parametrize("steps, block", BLOCKS)
def test_blocks_equal_the_loop(steps, block):
    check(steps, block)


@pytest.mark.parametrize("steps, block", BLOCKS)
def test_blocks_equal_the_loop_without_erase(steps, block):
    check(steps, block, erase=False)


@pytest.mark.parametrize("erase", [True, False], ids=["delta", "hebbian"])
@pytest.mark.parametrize("steps, block", BLOCKS)
def test_blocks_equal_the_loop_with_unit_decay(steps, block, erase):
    """a = 1 exactly, as a tensor (the general decay products) and as None (no decay)."""
    check(steps, block, erase=erase, unit_decay=True)
    check(steps, block, erase=erase, no_decay=True)


@pytest.mark.parametrize("length", [1, 2, 5, 8, 13, 64])
def test_unit_lower_inverse(length):
    """(I + N)^{-1} for every padding case (lengths that are and are not powers of two, below
    and above the row sweep's size), and its gradient, against LAPACK and autograd of it."""
    g = torch.Generator().manual_seed(length)
    n = (0.5 * torch.randn(3, length, length, generator=g, dtype=torch.float64)).tril(-1)
    eye = torch.eye(length, dtype=torch.float64)
    solve = lambda n: torch.linalg.solve_triangular(n + eye, eye.expand(3, -1, -1), upper=False,
                                                   unitriangular=True)
    r = torch.randn(3, length, length, generator=g, dtype=torch.float64)
    n1, n2 = n.clone().requires_grad_(True), n.clone().requires_grad_(True)
    t = unit_lower_inverse(n1)
    assert_close(t, solve(n2), 1e-12, "T")
    (grad,) = torch.autograd.grad((t * r).sum(), n1)
    (expected,) = torch.autograd.grad((solve(n2) * r).sum(), n2)
    assert_close(grad, expected.tril(-1), 1e-12, "dN")


@pytest.mark.parametrize("length", [1, 2, 7, 8, 16, 24, 64, 80, 128])
def test_unit_lower_solve(length):
    """(I + N)^{-1} R, by T R (odd lengths, below HALVES) and by the halves (even lengths from
    HALVES on), and its gradients, against LAPACK and autograd of it."""
    g = torch.Generator().manual_seed(length)
    n = (0.5 * torch.randn(3, length, length, generator=g, dtype=torch.float64)).tril(-1)
    rhs = torch.randn(3, length, 5, generator=g, dtype=torch.float64)
    eye = torch.eye(length, dtype=torch.float64)
    solve = lambda n, rhs: torch.linalg.solve_triangular(n + eye, rhs, upper=False,
                                                         unitriangular=True)
    r = torch.randn(3, length, 5, generator=g, dtype=torch.float64)
    ours = [t.clone().requires_grad_(True) for t in (n, rhs)]
    lapack = [t.clone().requires_grad_(True) for t in (n, rhs)]
    x = unit_lower_solve(*ours)
    assert_close(x, solve(*lapack), 1e-12, "X")
    grads = torch.autograd.grad((x * r).sum(), ours)
    expected = torch.autograd.grad((solve(*lapack) * r).sum(), lapack)
    assert_close(grads[0], expected[0].tril(-1), 1e-12, "dN")
    assert_close(grads[1], expected[1], 1e-12, "dR")


def test_module_loop_equals_the_loop():
    s0, a, c, k, w, q = problem(20, 3)
    queries = [(q, False), (q, True)]
    ys, s = linear_delta_loop(s0, a, c, k, w, queries)
    ys_ref, s_ref = loop(s0, a, c, k, w, queries)
    bound = rounding_bound(20, max(DK, DV))
    for y, y_ref in zip(ys, ys_ref):
        assert_close(y, y_ref, bound, "y")
    assert_close(s, s_ref, bound, "S")


ZEROS = [pytest.param((5,), id="inside-a-block"),
         pytest.param((0, 8, 16), id="first-of-blocks"),
         pytest.param((7, 15, 23), id="last-of-blocks"),
         pytest.param(tuple(range(24)), id="every-token")]


@pytest.mark.parametrize("zeros", ZEROS)
def test_a_decay_of_exactly_zero(zeros):
    """a_t = 0 with the erase term still on (c_t > 0): S_t = -c_t k_t k_t^T S_{t-1} + k_t w_t^T.
    Products of decays, never ratios: no 0/0, and the loop's values."""
    check(24, 8, zeros=zeros)


@pytest.mark.parametrize("zeros", ZEROS)
def test_a_gated_reset_forgets_exactly(zeros):
    """a_t = c_t = 0 (Gated DeltaNet's alpha_t = 0) forgets everything before t. In the block
    form every path from s0 past t is multiplied by an exact 0 (gamma, D and the rows of the
    triangular solve), so the outputs from t on and S_T do not depend on s0 bit for bit."""
    ys, s_end = check(24, 8, zeros=zeros, erase_zeros=True)
    s0, a, c, k, w, q = problem(24, 0, zeros=zeros, erase_zeros=True)
    ys2, s_end2 = linear_delta_blocks(s0 * 7 + 1, a, c, k, w, [(q, False), (q, True)], 8)
    last = max(zeros)
    assert torch.equal(ys2[0][:, :, last:], ys[0][:, :, last:])
    assert torch.equal(ys2[1][:, :, last + 1:], ys[1][:, :, last + 1:])
    assert torch.equal(s_end2, s_end)


def test_c_none_equals_c_zero():
    s0, a, _, k, w, q = problem(24, 1)
    y_none, s_none = linear_delta_blocks(s0, a, None, k, w, [(q, False)], 8)
    y_zero, s_zero = linear_delta_blocks(s0, a, torch.zeros_like(a), k, w, [(q, False)], 8)
    bound = rounding_bound(24, max(DK, DV), 8)
    assert_close(y_zero[0], y_none[0], bound, "y")
    assert_close(s_zero, s_none, bound, "S")


def test_no_queries():
    s0, a, c, k, w, _ = problem(10, 2)
    ys, s = linear_delta_blocks(s0, a, c, k, w, [], 4)
    _, s_loop = loop(s0, a, c, k, w, [])
    assert ys == []
    assert_close(s, s_loop, rounding_bound(10, max(DK, DV), 4), "S")


@pytest.mark.parametrize("variant", ["decay", "unit-decay", "no-decay", "no-erase"])
@pytest.mark.parametrize("block", [pytest.param(b, id=f"block{b}") for b in (1, 5, 8)])
def test_gradients_equal_the_loop(block, variant):
    """d/d(s0, a, c, k, w, q) of <y, r> + <S_T, r'>; the forward error feeds the backward
    pass (rounding_bound's passes = 3). `unit-decay`: a = 1 but requiring a gradient (the
    shortcut must not drop d/da)."""
    s0, a, c, k, w, q = problem(16, 4, erase=variant != "no-erase")
    if variant in ("unit-decay", "no-decay"):
        a = torch.ones_like(a)
    if c is None:
        c = torch.zeros_like(a)                      # a zero leaf, so the tuple stays aligned
        erase_of = lambda c: None
    else:
        erase_of = lambda c: c
    inputs = tuple(t.requires_grad_(True) for t in (s0, a, c, k, w, q))
    s0, a, c, k, w, q = inputs
    g = torch.Generator().manual_seed(9)
    r = torch.randn(B, H, 16, DV, generator=g, dtype=torch.float64)
    r2 = torch.randn(B, H, DK, DV, generator=g, dtype=torch.float64)

    def grads(run):
        decay = None if variant == "no-decay" and run is not loop else a
        ys, s = run(s0, decay, erase_of(c), k, w, [(q, False)])
        return torch.autograd.grad((ys[0] * r).sum() + (s * r2).sum(), inputs,
                                   allow_unused=True, materialize_grads=True)

    blocked = grads(lambda *args: linear_delta_blocks(*args, block))
    looped = grads(loop)
    bound = rounding_bound(16, max(DK, DV), block, passes=3)
    for name, gb, gl in zip(("s0", "a", "c", "k", "w", "q"), blocked, looped):
        if (name == "c" and variant == "no-erase") or (name == "a" and variant == "no-decay"):
            continue
        assert gl.abs().max() > 0
        assert_close(gb, gl, bound, f"d/d{name}")


def test_decay_products():
    """D[t, i] = prod_{i<j<=t} a_j for t >= i, else 0; gamma_t = prod_{j<=t} a_j: exact for
    these dyadic decays (every product is exactly representable)."""
    a = torch.tensor([0.5, 0.25, 0.0, 2.0, 0.5], dtype=torch.float64)
    d, gamma = decay_products(a)
    for t in range(5):
        for i in range(5):
            expected = float(torch.prod(a[i + 1:t + 1])) if t >= i else 0.0
            assert d[t, i].item() == expected, (t, i)
        assert gamma[t].item() == float(torch.prod(a[:t + 1]))


def test_decay_products_batch_dims():
    a = torch.rand(2, 3, 4, 6, dtype=torch.float64)
    d, gamma = decay_products(a)
    assert d.shape == (2, 3, 4, 6, 6) and gamma.shape == (2, 3, 4, 6)
    assert torch.equal(d[1, 2, 3], decay_products(a[1, 2, 3])[0])


def test_decay_products_of_ones():
    """The no-decay shortcut gives the general formula's values: D = lower triangle of ones."""
    d, gamma = decay_products(torch.ones(3, 6, dtype=torch.float64))
    assert torch.equal(d, torch.ones(6, 6, dtype=torch.float64).tril().expand(3, 6, 6))
    assert torch.equal(gamma, torch.ones(3, 6, dtype=torch.float64))
    general, _ = decay_products(torch.ones(3, 6, dtype=torch.float64).requires_grad_(True))
    assert torch.equal(general.detach(), d)


def test_chunked_projects_the_input_in_one_gemm():
    """Without gradients the chunked schedule computes a level's `x @ W` contexts as one
    product with the weights side by side; each piece equals its own product (float64, to the
    GEMM's rounding). With gradients it does not (a weight cut from the loss keeps grad None)."""
    m = nldsl.compile("deltanet", dim=8, heads=2, head_dim=3).double()
    x = torch.randn(2, 5, 8, dtype=torch.float64)
    params = dict(m.named_parameters())
    values = _SequenceValues(m.program, params, x, m.initial_state(2), m.call_plan.leaves)
    level = m.program.levels[0]
    values.project(level)
    assert values.products == {}
    with torch.no_grad():
        values.project(level)
    nodes = {node.right.id: node for expr in level.contexts.values() for node in _walk(expr)
             if isinstance(node, ast.Binary) and node.op == "@"}
    assert set(nodes) == {"Wk", "Wv", "Wq", "W_beta"}
    for name, node in nodes.items():
        product = values.products[id(node)]                          # [B, T, 1, width]
        assert_close(product.squeeze(2), x @ params[name], 1e-14, name)
    with torch.no_grad():
        fused, _ = m(x)
    assert_close(fused, m(x)[0], 1e-14, "y without gradients")


def _walk(expr):
    yield expr
    for child in children(expr):
        yield from _walk(child)
