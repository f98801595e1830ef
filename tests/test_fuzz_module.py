"""Differential fuzzing of the module compiler (issue 8, §7, extended to module specs): a module
spec drawn from the linear family (`nldsl.fuzzing.module_specs`) either compiles and gives the
same outputs and final states in the `reference` and `chunked` schedules, or is refused with a
located `NLDSLError` (its message has `<string>:line:col`) by `nldsl.load` or `nldsl.compile`.
Never another exception (at load, compile or the forward pass), never a hang (HANG_LIMIT_S per
example). Nothing drawn is filtered out; the stream length, batch and block size are drawn too.
head_dim = 1 is drawn too: there a width heads * 1 is both heads of width 1 and one scalar per
head, and the use decides (docs/language.md, "Heads"); the FOUND "head-dim-1" cases pin it.

Numbers: float64 modules, the chunked one given the reference's parameters (conv kernels
included). The chunked schedule runs each level either by its fast path (the WY/UT block form
of a linear memory, nldsl/module/delta_chunk.py) or token by token, as the reference does. The
block form associates the same sums differently: `_module_cases.rounding_bound` derives
2 * 4 * (T + L) * (L + width + 3) * u relative to the largest magnitude (two evaluations, T
tokens, inner products of the block L plus the width, transitions of norm <= 1: the generator
l2-normalises the keys of erasing rules and keeps their rates and decays in (0, 1]). A read
through `rmsnorm` divides by sqrt(mean(y^2) + 1e-5), which turns an absolute error of a
near-zero read into one up to 1/sqrt(1e-5) = 316 times larger relative to the output's scale:
the bound is multiplied by that gain. It stays below 1e-8 for these sizes, while a schedule
bug (a gate at the wrong token, a block boundary off by one, a dropped decay) changes values
by the size of a gate, 1e-2 or more.
"""
from __future__ import annotations


import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import nldsl
import nldsl.module.module  # noqa: F401  imported here, not inside the first example's hang guard
from _module_cases import U64, assert_close, flat_state
from nldsl.fuzzing import module_specs
from nldsl.testing import assert_located, hang_guard, loaded_or_refused

HANG_LIMIT_S = 20
#: head_dim = 1 is drawn (the FOUND "head-dim-1" cases were its failures, fixed).
MIN_HEAD_DIM = 1
RMSNORM_GAIN = 1e-5 ** -0.5
MAX_WIDTH = 12                        # heads * head_dim <= 3 * 4: the widest key or value

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def tolerance(steps: int, block: int) -> float:
    """The module docstring's bound, for a stream of `steps` tokens cut in blocks of `block`."""
    block = min(block, steps)
    return 2 * 4 * (steps + block) * (block + MAX_WIDTH + 3) * U64 * RMSNORM_GAIN


def compiled(spec, schedule: str, block: int):
    """A float64 module, or the located error that refuses the spec."""
    torch.manual_seed(0)
    try:
        return nldsl.compile(spec, schedule=schedule, block_size=block).to(torch.float64)
    except nldsl.NLDSLError as err:
        assert_located(err)
        return None


def check(text: str, batch: int, steps: int, block: int) -> None:
    """The property: located error at load or compile (both schedules alike), or the same
    outputs and final states."""
    with hang_guard(HANG_LIMIT_S):
        spec = loaded_or_refused(text)
        if spec is None:
            return
        reference, chunked = compiled(spec, "reference", block), compiled(spec, "chunked", block)
        assert (reference is None) == (chunked is None), "refused by one schedule only"
        if reference is None:
            return
        chunked.load_state_dict(reference.state_dict())
        generator = torch.Generator().manual_seed(steps)
        x = torch.randn(batch, steps, reference.program.dim, generator=generator, dtype=torch.float64)
        with torch.no_grad():
            (y_ref, s_ref), (y_fast, s_fast) = reference(x), chunked(x)
    bound = tolerance(steps, block)
    assert_close(y_fast, y_ref, bound, "y")
    s_ref, s_fast = flat_state(s_ref), flat_state(s_fast)
    assert s_fast.keys() == s_ref.keys(), (sorted(s_fast), sorted(s_ref))
    for name, value in s_ref.items():
        if isinstance(value, torch.Tensor):
            assert_close(s_fast[name], value, bound, f"final state {name}")
        else:
            assert s_fast[name] == value, f"final state {name}: {s_fast[name]!r} != {value!r}"


@FUZZ
@given(text=module_specs(min_head_dim=MIN_HEAD_DIM), batch=st.integers(1, 2), steps=st.integers(1, 16),
       block=st.sampled_from([1, 2, 3, 5, 64]))
def test_drawn_module_runs_alike_in_both_schedules_or_fails_located(text, batch, steps, block):
    check(text, batch, steps, block)


def module(heads: int, head_dim: int, level: str, *body: str) -> str:
    """A one-level module spec: projections Wk, Wv, Wq of x, a [head_dim, head_dim] memory M,
    the level's `body`, and out = y @ Wo."""
    return (f"module m(dim: int = 3 >= 1, heads: int = {heads} >= 1, head_dim: int = {head_dim} >= 1) {{\n"
            + "".join(f"  state {w} : [dim, heads * head_dim] = normal(1.0)\n" for w in ("Wk", "Wv", "Wq"))
            + "  state Wo : [heads * head_dim, dim] = normal(0.5)\n"
            + f"  level mem {level} {{\n    state M : [head_dim, head_dim] = 0\n"
            + "    key k = l2norm(x @ Wk)\n    value v = x @ Wv\n    query q = x @ Wq\n"
            + "".join(f"    {line}\n" for line in body) + "  }\n  out = y @ Wo\n}\n")


HEBBIAN = "minimize -dot(M(k), v) by gd(lr = 0.5)"

#: Minimal specs the fuzzer found failing, each fixed: regression cases, with what went wrong.
FOUND: dict[str, tuple[str, str]] = {
    "chunk-2-before-write": (module(1, 2, "every 1 token chunk 2", "M <- 0.9 * M + 0.5 * outer(v, k)",
                                    "read y = M(q) before write"),
                             "the block form read M_{t-1} where the reference reads the chunk start"),
    "chunk-2-state": (module(1, 2, "every 1 token chunk 2", "M <- 0.9 * M + 0.5 * outer(v, k)",
                             "read y = M(q)"),
                      "the block form's final state had no chunk-start snapshot"),
    "channel-wise-write-gate": (module(2, 3, "every 1 token heads heads", "gate b = sigmoid(x @ Wv)",
                                       "M <- 0.9 * M + b * outer(v, k)", "read y = M(q)"),
                                "the block form took b * outer(v, k) as outer(b v, k) for a "
                                "channel-wise b (it is outer(v, b k))"),
    "deltanet-like": (module(2, 2, "every 1 token heads heads",
                             "minimize l2(M(k), v) by gd(lr = 0.5)", "read y = M(q)"),
                      "the property's plain case"),
    "heads-1-head-dim-1": (module(1, 1, "every 1 token heads heads", HEBBIAN, "read y = M(q)"),
                           "head_dim 1: a width-1 key or query was squeezed to a scalar per head, "
                           "so M(q) broadcast over the batch and the merge check failed"),
    "head-dim-1-every-2": (module(2, 1, "every 2 tokens heads heads", HEBBIAN, "read y = M(q)"),
                           "head_dim 1: M(q) took a per-head scalar q as a vector (matmul error)"),
    "head-dim-1-gated-read-every-2": (
        module(1, 1, "every 2 tokens heads heads", "gate b = sigmoid(x @ Wv)",
               "minimize l2(M(k), v) by gd(lr = b)", "read y = M(q) * b before write"),
        "head_dim 1: M @ k against a per-head scalar k, and a merged per-head scalar of one head "
        "lost its width (reads of shapes [1, 3] and [1, 1, 3])"),
}


@pytest.mark.parametrize("text", [pytest.param(text, id=name) for name, (text, _) in FOUND.items()])
@pytest.mark.parametrize("block", [1, 3])
def test_known_cases(text, block):
    check(text, 2, 7, block)
