"""Differential fuzzing of the module compiler's deep memories: a module spec with `mlp` memories
(`nldsl.fuzzing_deep.deep_module_specs`) either compiles and gives the same outputs and final
states (and, for a drawn subset, the same gradients with respect to x and every parameter) in
the `reference` and `chunked` schedules, or is refused with a located `NLDSLError` (its message
has `<string>:line:col`) by `nldsl.load` or `nldsl.compile`. Never another exception, never a
hang (HANG_LIMIT_S per example). Where the draw has a shape docs/modules.md says takes a deep
fast path (the deep, periodic, derived or chain chunk form), the chunked module must have taken
it, and run it without falling back to the token loop: otherwise the fuzzer would compare the
reference with itself.

Numbers: float64 modules, the chunked one given the reference's parameters. The fast paths
evaluate the same real function with differently associated float64 sums (u = 2^-53): one
token's write forms inner products of length at most the widest memory layer, head or chunk
(w <= MAX_WIDTH) plus a few elementwise roundings, (w + 3) u relative. An MLP memory's write is
not a contraction: with learning rates <= 0.3, unit keys and O(1) weights the step from M_{t-1}
to M_t has Lipschitz constant below 2 (tests/test_module_deep_memories.py, `deep_bound`), so an
error made at token s grows at most 2^(T - s): 4 * 2^T (w + 3) u per evaluation, the 4 for
the projections, convs and gates around the memory, times 2 for two evaluations. Newton-Schulz
in a chain amplifies a rounding of its input at most 4 per step (the quintic's slope where its
iterates lie), so k steps multiply the bound by 4^k. A read through `rmsnorm` divides by
sqrt(mean(y^2) + 1e-5), turning an absolute error of a near-zero read into one up to
1/sqrt(1e-5) = 316 times larger relative to the output's scale. Gradients pass twice through
the recurrence (forward error into the backward one): times 2, relative to the largest
gradient of all (every gradient sums products of the same backward signals, so a gradient that
is 0 in exact arithmetic, a parameter the output barely depends on, is rounding of that size);
final states likewise relative to the largest state of their level (an `every N` level's
pending sum is the difference of two memories, rounded at their size). Every scale is at least
1: outputs, states and backward signals are sums of O(1) terms (unit keys, O(1) weights, gates
<= 1, the functional's weights in [-1, 1]), so a value that cancels to 0 in exact arithmetic (a
residual read W q + q with W = -1; two equal sequences under the antisymmetric functional, every
gradient 0) is rounding of that size, not of its own. At the largest draws (T 10,
w 12, k 4, rmsnorm) the bound is 2 * 2 * 4 * 2^10 * 15 * 256 * 316 * u = 8e-6 relative, while a
schedule bug (a gate at the wrong token, a gradient at the wrong snapshot, a dropped decay)
moves values by O(lr) = 1e-2 or more.
"""
from __future__ import annotations

from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import nldsl
import nldsl.module.module  # noqa: F401  imported here, not inside the first example's hang guard
import nldsl.module.chunked as chunked_schedule
from _module_cases import U64, flat_layers, stream_in_parts
from nldsl.fuzzing_deep import DeepDraw, deep_module_specs
from nldsl.testing import assert_located, hang_guard, loaded_or_refused

HANG_LIMIT_S = 30
RMSNORM_GAIN = 1e-5 ** -0.5
#: >= the longest inner product: a hidden layer (2 * head_dim = 8), the merged heads (8), a
#: deep chunk (5) plus a window (3)
MAX_WIDTH = 12
MAX_STEPS = 10

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def tolerance(steps: int, ns_steps: int, rmsnorm: bool, passes: int) -> float:
    """The module docstring's bound, relative to the largest magnitude."""
    gain = RMSNORM_GAIN if rmsnorm else 1.0
    return 2 * passes * 4 * 2 ** steps * (MAX_WIDTH + 3) * 4 ** ns_steps * gain * U64


def compiled(spec, schedule: str, block: int, checkpoint: bool = False):
    """A float64 module, or the located error that refuses the spec."""
    torch.manual_seed(0)
    try:
        return nldsl.compile(spec, schedule=schedule, block_size=block,
                             checkpoint=checkpoint).to(torch.float64)
    except nldsl.NLDSLError as err:
        assert_located(err)
        return None


def run(m, x: torch.Tensor, grads: bool, cut: int | None):
    """(y, flat final state, gradients of a fixed linear functional of y w.r.t. x and every
    parameter, or None), the stream in one call or cut in two at `cut` (the state carried)."""
    call = lambda x: m(x) if cut is None else stream_in_parts(m, x, (cut,))
    if not grads:
        with torch.no_grad():
            y, state = call(x)
        return y, flat_layers(state), None
    x = x.clone().requires_grad_()
    y, state = call(x)
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    inputs = [x] + list(m.parameters())
    found = torch.autograd.grad((y * weights).sum(), inputs, allow_unused=True)
    return y.detach(), flat_layers(state), [torch.zeros_like(i) if g is None else g
                                            for i, g in zip(inputs, found)]


def check(draw: DeepDraw, batch: int, steps: int, block: int, grads: bool,
          cut: int | None = None, checkpoint: bool = False) -> bool:
    """The property: located error at load or compile (both schedules alike), or the same
    outputs, final states (and gradients), with the expected fast path taken; the chunked
    module with `checkpoint` (recomputing its chunks in the backward pass) or not. Returns
    whether the schedules ran (False: refused)."""
    with hang_guard(HANG_LIMIT_S):
        spec = loaded_or_refused(draw.text)
        if spec is None:
            return False
        reference = compiled(spec, "reference", block)
        chunked = compiled(spec, "chunked", block, checkpoint)
        assert (reference is None) == (chunked is None), "refused by one schedule only"
        if reference is None:
            return False
        for level, forms in draw.expect.items():
            taken = type(chunked.fast_paths.get(level)).__name__
            assert taken in forms, f"{level}: expected the {' or '.join(forms)}, took {taken}"
        chunked.load_state_dict(reference.state_dict())
        generator = torch.Generator().manual_seed(steps)
        x = torch.randn(batch, steps, reference.program.dim, generator=generator, dtype=torch.float64)
        cut = cut if cut is not None and 0 < cut < steps else None
        expected = run(reference, x, grads, cut)
        fallback = mock.patch.object(chunked_schedule, "run_reference",
                                     side_effect=AssertionError("the chunked schedule fell back "
                                                                "to the reference"))
        if draw.expect:
            with fallback:
                actual = run(chunked, x, grads, cut)
        else:
            actual = run(chunked, x, grads, cut)
    bound = tolerance(steps, draw.ns_steps, draw.rmsnorm, 1)
    assert_all_close({"y": actual[0]}, {"y": expected[0]}, bound, "y")
    assert actual[1].keys() == expected[1].keys(), (sorted(actual[1]), sorted(expected[1]))
    for level in {name.split(".")[0] for name in expected[1]}:
        own = lambda state: {n: v for n, v in state.items() if n.split(".")[0] == level}
        assert_all_close(own(actual[1]), own(expected[1]), bound, "final state")
    if grads:
        names = ["x"] + [n for n, _ in reference.named_parameters()]
        assert_all_close(dict(zip(names, actual[2])), dict(zip(names, expected[2])),
                         tolerance(steps, draw.ns_steps, draw.rmsnorm, 2), "grad")
    return True


def assert_all_close(actual: dict, expected: dict, bound: float, what: str) -> None:
    """Every tensor within `bound` times the largest magnitude of them all, at least 1 (the
    module docstring: rounding is relative to the terms summed, and a pending sum or a gradient
    near 0 is a cancellation of terms of that size); other entries equal."""
    tensors = [v for v in expected.values() if isinstance(v, torch.Tensor) and v.numel()]
    scale = max(max((v.abs().max().item() for v in tensors), default=0.0), 1.0)
    for name, b in expected.items():
        a = actual[name]
        if not isinstance(b, torch.Tensor):
            assert a == b, f"{what} {name}: {a!r} != {b!r}"
            continue
        assert a.shape == b.shape and a.dtype == b.dtype, f"{what} {name}: {a.shape} != {b.shape}"
        assert torch.isfinite(a).all(), f"{what} {name}: not finite"
        error = (a - b).abs().max().item() if b.numel() else 0.0
        assert error <= bound * scale, \
            f"{what} {name}: max error {error:.3e} > {bound:.3e} x scale {scale:.3e}"


@FUZZ
@given(draw=deep_module_specs(), batch=st.integers(1, 2), steps=st.integers(1, MAX_STEPS),
       block=st.sampled_from([1, 3, 64]), grads=st.integers(0, 3).map(lambda n: n == 0),
       cut=st.one_of(st.none(), st.integers(1, MAX_STEPS - 1)), checkpoint=st.booleans())
def test_drawn_deep_module_runs_alike_in_both_schedules_or_fails_located(draw, batch, steps,
                                                                           block, grads, cut,
                                                                           checkpoint):
    check(draw, batch, steps, block, grads, cut, checkpoint)


def deep(level: str, memory: str, *body: str, read: str = "read y = M(k)") -> str:
    """A one-level module spec: projections Wk, Wv, a gate projection Wa of width head_dim
    (a channel-wise gate) or Wh of width 1, the memory `memory` (its state line), `body`, the
    read, out = y @ Wo."""
    return ("module m(dim: int = 3 >= 1, head_dim: int = 3 >= 1) {\n"
            + "".join(f"  state {w} : [dim, head_dim] = normal(0.5)\n" for w in ("Wk", "Wv", "Wa"))
            + "  state Wh : [dim, 1] = normal(1.0)\n  state Wo : [head_dim, dim] = normal(0.5)\n"
            + f"  level mem {level} {{\n    {memory}\n    key k = l2norm(x @ Wk)\n"
            + "    value v = x @ Wv\n    gate alpha = sigmoid(x @ Wa)\n    gate h = sigmoid(x @ Wh)\n"
            + "".join(f"    {line}\n" for line in body) + f"    {read}\n  }}\n  out = y @ Wo\n}}\n")


NORMED = "state M : mlp(head_dim -> head_dim, layernorm)"
DERIVED = ("let W = A / norm(A)", "let S = A + stopgrad(W - A)")

PER_HEAD = """module m(dim: int = 3 >= 1, heads: int = 2 >= 1, head_dim: int = 3 >= 1) {
  state Wk : [dim, heads * head_dim] = normal(0.5)
  state Wa : [dim, heads * head_dim] = normal(0.5)
  state We : [dim, heads] = normal(0.5)
  state Wo : [heads * head_dim, dim] = normal(0.5)
  level mem every 1 token chunk 2 heads heads {
    state M : mlp(head_dim -> head_dim)
    key k = l2norm(x @ Wk)
    gate alpha = sigmoid(x @ Wa)
    gate eta = sigmoid(x @ We)
    minimize l2(M(k), k) by gd(lr = eta * alpha, decay = 0.9)
    read y = M(k)
  }
  out = y @ Wo
}
"""

DGD_HEAD_DIM_1 = """module m(dim: int = 3 >= 1, heads: int = 1 >= 1, head_dim: int = 1 >= 1) {
  state Wk : [dim, heads * head_dim] = normal(0.5)
  state Wv : [dim, heads * head_dim] = normal(0.5)
  state Wo : [heads * head_dim, dim] = normal(0.5)
  level mem every 1 token heads heads {
    state M : mlp(head_dim -> head_dim -> head_dim, silu)
    key k = l2norm(x @ Wk)
    value v = x @ Wv
    minimize l2(M(k), v) by dgd(lr = 0.1, precondition = true)
    read y = M(k)
  }
  out = y @ Wo
}
"""

#: Minimal specs the fuzzer found failing, each fixed: name -> (spec, the forms its levels may
#: take, what went wrong).
FOUND: dict[str, tuple[str, dict, str]] = {
    "layernorm-channel-gate": (
        deep("every 1 token chunk 2", NORMED, "minimize l2(M(k), v) by gd(lr = 0.1, decay = alpha)"),
        {}, "a channel-wise gate on a layernorm memory left out gamma's part (a shape error in the "
            "reference; runtime/layerwise.py)"),
    "once-channel-gate": (
        deep("every 2 tokens chunk 2 once", "state M : mlp(head_dim -> head_dim)",
             "minimize l2(M(k), v) by gd(lr = 0.1, decay = alpha)"),
        {}, "a `once` level applied a channel-wise gate as it is, not as a factor of the weights "
            "(a shape error at the period's step; module/reference.py)"),
    "layernorm-derived-memory": (
        deep("every 1 token chunk 2", "state A : mlp(head_dim -> head_dim, layernorm)",
             "let W = 0.5 * A", "minimize l2(A(k), v) by gd(lr = 0.1)", read="read y = W(k)"),
        {}, "a per-weight expression of a layernorm memory left out gamma (a shape error; "
            "runtime/layerwise.py)"),
    "layernorm-explicit-update": (
        deep("every 1 token", "state A : mlp(head_dim -> head_dim, layernorm)",
             "state M : mlp(head_dim -> head_dim, layernorm)",
             "A: minimize l2(A(k), v) by gd(lr = 0.1)", "M <- 0.9 * M + 0.1 * A"),
        {}, "the same, in an MLP state's explicit update"),
    "window-of-a-derived-memory": (
        deep("every 1 token chunk 2", "state A : mlp(head_dim -> head_dim)", *DERIVED,
             "minimize window(2, l2(S(k), v), h) by gd(lr = 0.1)", read="read y = W(k)"),
        {}, "a window's loss applying a derived memory: the window's evaluation could not see "
            "derived memories (a RuntimeError; module/unit.py)"),
    "window-1-before-write": (
        deep("every 1 token chunk 2", "state M : mlp(head_dim -> head_dim)",
             "minimize window(1, l2(M(k), v), h) by ema(h) then gd(lr = 0.1, decay = 0.9)",
             read="read y = M(k) before write"),
        {"mem": ("ChainForm",)},
        "a window of width 1 passed the snapshot form's no-window check (level.window > 1), "
        "whose evaluator has no window (a TypeError; lower/snapshot_forms.py)"),
    "once-width-1-gate-cut": (
        deep("every 2 tokens chunk 2 once", "state M : mlp(head_dim -> head_dim)",
             "minimize l2(M(k), v) by momentum(lr = 0.3 * h, beta = h, decay = 0.9)"),
        {"mem": ("PeriodicForm",)},
        "a stream cut mid-period: the periodic form kept the rule's pending width-1 gates as "
        "[B], the reference as [B, 1] (module/periodic_chunk.py)"),
    "mlp-state-like-mlp": (
        deep("every 1 token", "state M : mlp(head_dim -> 2 * head_dim -> head_dim)",
             "state N like M", "M: minimize l2(M(k), v) by gd(lr = 0.1)",
             "N: minimize l2(N(v), k) by gd(lr = 0.1)", read="read y = M(k) + N(k)"),
        {}, "`state N like M` of an mlp M: N's objective took a matrix's closed-form gradient "
            "(the lowering looked for an mlp(...) shape without following `like`; "
            "lower/module.py)"),
    "dgd-precondition-head-dim-1": (
        DGD_HEAD_DIM_1, {}, "head_dim 1, one head: the preconditioner's key was a number per "
                            "head, not [1] (a shape error; module/reference.py)"),
    "layernorm-snapshot-gd": (
        deep("every 1 token chunk 2", NORMED, "minimize l2(M(k), v) by gd(lr = 0.1, decay = 0.9)",
             read="read y = M(k) before write"),
        {"mem": ("SnapshotForm",)},
        "a layernorm memory in the snapshot form: gamma's end state summed outer products "
        "delta a^T, not the elementwise delta o LN(z) (a shape error; module/snapshot_end.py)"),
    "layernorm-snapshot-chain": (
        deep("every 1 token chunk 2", NORMED,
             "minimize l2(M(k), v) by ema(h) then gd(lr = 0.1, decay = 0.9)",
             read="read y = M(k) before write"),
        {"mem": ("SnapshotForm",)},
        "the same in a chain: gamma's buffer took [d_L, d_L] per token (a shape error; "
        "module/snapshot_chain.py)"),
    "layernorm-snapshot-chain-width-1": (
        deep("every 1 token chunk 2", NORMED,
             "minimize l2(tanh(M(k)), v) by ema(h) then gd(lr = 0.1, decay = 0.9)",
             read="read y = M(k) before write").replace("head_dim: int = 3", "head_dim: int = 1"),
        {"mem": ("SnapshotForm",)},
        "the same at d_L = 1: the [1, 1] buffer passed, the end state's flatten refused it "
        "(module/snapshot_chain.py)"),
    "layernorm-snapshot-clip": (
        deep("every 1 token chunk 2", NORMED,
             "minimize l2(M(M(k)), v) by gd(lr = 0.1, decay = h, clip = 0.05)",
             read="read y = M(k) before write"),
        {"mem": ("SnapshotForm",)},
        "with `clip`: the reference clipped gamma by its norm over the whole batch, the "
        "snapshot form's guard took gamma's pair for a layer's (module/guard.py)"),
    "per-head-rate-times-channel-gate": (
        PER_HEAD, {}, "refused: the channel-gate check inferred a rule's argument outside its "
                      "level, where eta * alpha is [heads] times [heads * head_dim], not one "
                      "head's number times its [head_dim] (validation/memories.py)"),
}


@pytest.mark.parametrize("text, expect", [pytest.param(text, expect, id=name)
                                          for name, (text, expect, _) in FOUND.items()])
@pytest.mark.parametrize("block, cut", [pytest.param(1, None, id="block1"),
                                        pytest.param(3, 3, id="block3-cut3")])
def test_known_cases(text, expect, block, cut):
    assert check(DeepDraw(text, expect=expect), 2, 7, block, grads=True, cut=cut), "refused"


#: Values that cancel to 0 in exact arithmetic (found by the fuzzer at max_examples 1500): with
#: dim 1, W = A / norm(A) is -1 or 1, so the residual read W(q) = W q + q is 0 where W = -1 (the
#: reference's 0 met the derived form's 3e-17), and at one token both sequences read the same
#: (every gradient of the antisymmetric functional 0, the reference's rounding 1e-32): a
#: relative comparison at a scale of 0 failed on rounding.
CANCELLING = """module m(dim: int = 1 >= 1) {
  state Wk : [dim, dim] = normal(0.5)
  state Wv : [dim, dim] = normal(0.5)
  state Wq : [dim, dim] = normal(0.5)
  state Wo : [dim, dim] = normal(0.5)
  level mem every 1 token chunk 2 {
    state A : mlp(dim -> dim, residual)
    key k = l2norm(x @ Wk)
    value v = x @ Wv
    query q = l2norm(x @ Wq)
    let W = A / norm(A)
    minimize l2(A(k), v) by gd(lr = 0.3)
    read y = W(q)
  }
  out = y @ Wo
}
"""


@pytest.mark.parametrize("steps", [pytest.param(1, id="every-gradient-0"),
                                   pytest.param(3, id="y-0")])
def test_a_value_that_cancels_to_zero_is_compared_at_its_terms_scale(steps):
    assert check(DeepDraw(CANCELLING, expect={"mem": ("DerivedForm",)}), 2, steps, 1, grads=True)
