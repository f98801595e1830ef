"""module/snapshot_chain.py: rule chains in the snapshot chunk form. Self-modifying Titans with
momentum (examples/self_modifying_titans_momentum.nl, `momentum(lr = 1, beta) then
dgd(precondition = true)`) in the chunked schedule equals the reference schedule and a token
loop written from NL eqs. 83-93 with a momentum buffer.

Outputs, final states (weights and momentum buffers by layer, chunk-start snapshots) and the
gradients of x and of every parameter, float64, lengths that neither chunk size divides, a
stream cut mid-chunk. Tolerance: `deep_bound`, as for the form without a chain. Chains on a
`layernorm` memory (gamma's buffer is elementwise in the gradient factors) equal the reference.
"""
from __future__ import annotations

import pytest
import torch

from _module_cases import assert_close, assert_states_close, flat_layers, forbid_fallback, inputs, \
    randomize
from nldsl.lower.snapshot_forms import SnapshotForm
from nldsl.module import compile as compile_module

from test_module_deep_memories import deep_bound
from test_module_snapshot_chunk import DIM, MEMORIES, assert_schedules_agree, paper_loop
from test_module_snapshot_end import assert_normed_schedules_agree, normed

SPEC = "examples/self_modifying_titans_momentum.nl"
#: eta_scale 0.3, beta 0.8: the writes move every memory by far more than rounding, and the
#: momentum buffers (which sum up to 1 / (1 - beta) gradients) keep 11 tokens finite.
HP = dict(dim=DIM, eta_scale=0.3, beta=0.8)


def build(schedule, chunk_projections=3, chunk_memory=4, seed=1, spec=SPEC, **overrides):
    """A float64 module with O(1) parameters; an override None leaves the hyper-parameter out."""
    hparams = {k: v for k, v in {**HP, **overrides}.items() if v is not None}
    torch.manual_seed(seed)
    m = compile_module(spec, schedule=schedule, chunk_memory=chunk_memory,
                       chunk_projections=chunk_projections, **hparams)
    return randomize(m.to(torch.float64), seed)


@pytest.mark.parametrize("steps, chunk_projections, chunk_memory, batch", [
    pytest.param(11, 3, 4, 2, id="T11-chunks3/4-B2"),
    pytest.param(9, 2, 5, 1, id="T9-chunks2/5-B1"),
    pytest.param(7, 8, 3, 2, id="T7-chunk8-longer-than-T"),
    pytest.param(1, 3, 4, 1, id="T1-B1"),
])
def test_chunked_equals_reference(steps, chunk_projections, chunk_memory, batch, monkeypatch):
    reference, chunked = (build(s, chunk_projections, chunk_memory)
                          for s in ("reference", "chunked"))
    assert set(chunked.fast_paths) == {"projections", "memory"}
    assert all(isinstance(f, SnapshotForm) for f in chunked.fast_paths.values())
    forbid_fallback(monkeypatch)
    x = inputs(batch, steps, DIM, 1).requires_grad_()
    bound = deep_bound(steps, 2 * DIM)
    assert any("_momentum" in key for key in assert_schedules_agree(reference, chunked, x, bound))


def test_a_cut_stream_equals_one_call(monkeypatch):
    """The momentum buffers travel in the state with the chunk-start snapshots."""
    m = build("chunked")
    forbid_fallback(monkeypatch)
    x = inputs(2, 10, DIM, 2)
    with torch.no_grad():
        y, whole = m(x)
        y1, state = m(x[:, :5], end=False)
        y2, cut = m(x[:, 5:], state)
    bound = deep_bound(10, 2 * DIM)
    assert_close(torch.cat([y1, y2], dim=1), y, bound, "y")
    assert_states_close(flat_layers(cut), flat_layers(whole), bound, "cut")


@pytest.mark.parametrize("schedule", ["reference", "chunked"])
def test_the_papers_token_loop_with_momentum(schedule):
    m = build(schedule)
    x = inputs(2, 9, DIM, 4)
    with torch.no_grad():
        y, state = m(x)
        expected, weights, momentum = paper_loop(m, x, 3, 4, HP["eta_scale"], HP["beta"])
    bound = deep_bound(9, 2 * DIM)
    assert_close(y, expected, bound, "y")
    for level, names in (("projections", MEMORIES), ("memory", ("M_memory",))):
        for name in names:
            for i, (w, b) in enumerate(zip(weights[name], momentum[name])):
                assert_close(state[level][name][i], w, bound, f"{name} layer {i + 1}")
                assert_close(state[level][f"{name}_momentum"][i], b, bound,
                             f"{name}_momentum layer {i + 1}")


def test_momentum_changes_the_writes():
    """The comparisons above are not vacuous: with beta = 0.8 the final weights differ from the
    recurrence without momentum by far more than the bound."""
    x = inputs(2, 9, DIM, 4)
    with torch.no_grad():
        _, with_momentum = build("chunked")(x)
        _, without = build("chunked", beta=0.0)(x)
    for name in MEMORIES:
        a, b = with_momentum["projections"][name][0], without["projections"][name][0]
        assert (a - b).abs().max() > 1e-3 * b.abs().max()


def test_beta_zero_is_the_stdlib_spec(monkeypatch):
    """beta = 0: m_t = G_t, the recurrence of nldsl/stdlib/self_modifying_titans.nl (whose
    chunk form writes the first layers in the WY form, a different association)."""
    forbid_fallback(monkeypatch)
    x = inputs(2, 11, DIM, 5)
    with torch.no_grad():
        y0, s0 = build("chunked", beta=0.0)(x)
        y1, s1 = build("chunked", spec="self_modifying_titans", beta=None)(x)
    bound = deep_bound(11, 2 * DIM)
    assert_close(y0, y1, bound, "y")
    for level in s1:
        for name in s1[level]:
            if isinstance(s1[level][name], tuple):
                for i, (a, b) in enumerate(zip(s0[level][name], s1[level][name])):
                    assert_close(a, b, bound, f"{level}.{name}.{i}")


#: Chained writes of `layernorm` memories (tests/test_fuzz_deep.py FOUND
#: "layernorm-snapshot-chain"): gamma's token gradient was an outer product, [d_L, d_L] per
#: token against its buffer's [d_L] (a shape error; at d_L = 1 a buffer [B, 1, 1] that the end
#: state's flatten refused).
NORMED_CHAINS = {
    "ema-then-gd": normed("minimize l2(M(k), v) by ema(h) then gd(lr = 0.3, decay = h)"),
    "ema-then-gd-head-dim-1": normed("minimize l2(tanh(M(k)), v) by ema(h) then "
                                     "gd(lr = 0.3, decay = h)", head_dim=1),
    "momentum-then-dgd-precondition": normed(
        "minimize l2(M(k), v) by momentum(lr = 1, beta = h) then "
        "dgd(lr = 0.3, decay = h, precondition = true)",
        memory="mlp(head_dim -> 2 * head_dim -> head_dim, silu, layernorm)"),
}


@pytest.mark.parametrize("text", [pytest.param(t, id=n) for n, t in NORMED_CHAINS.items()])
def test_a_layernorm_memorys_chain_equals_the_reference(text, monkeypatch):
    state = assert_normed_schedules_agree(text, monkeypatch)
    assert any("_momentum" in key or "_ema" in key for key in state), sorted(state)
