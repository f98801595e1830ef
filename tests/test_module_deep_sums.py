"""The sums of the deep chunk form (nldsl/module/deep_sums.py), each against the quantity it
stands for written out directly: the gate products, the per-token reads from the materialised
M_t, the end state, and the two ways of taking the coefficients' last rows. The chunk form as
a whole is compared with the reference schedule in tests/test_module_deep_chunk.py."""
from __future__ import annotations

import pytest
import torch

from nldsl.lower.program import MLPLayout
from nldsl.module.deep_sums import (batched_forward, chunk_coefficients, chunk_end, chunk_slots,
                                    gate_products, last_row, last_rows, masked_read, start_stacks)
from nldsl.runtime import mlp

U64 = torch.finfo(torch.float64).eps
LAYOUT = MLPLayout(widths=(3, 5, 3), activation="gelu", residual=False)


def gates(*shape, seed=0, low=0.5):
    g = torch.Generator().manual_seed(seed)
    return low + (1 - low) * torch.rand(*shape, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("zero_at", [None, 0, 2], ids=["positive", "zero-first", "zero-inside"])
def test_gate_products_are_the_running_products(zero_at):
    g = gates(2, 5)
    if zero_at is not None:
        g[:, zero_at] = 0.0
    p = gate_products(g)                                                  # [2, 6, 6]
    for t in range(6):
        for r in range(6):
            expected = torch.ones(2, dtype=torch.float64) if t >= r else torch.zeros(2)
            for i in range(r + 1, t + 1):
                expected = expected * g[:, i - 1]
            assert torch.equal(p[:, t, r], expected.to(p.dtype)), (t, r)


def token_states(m0, s0, coefficients, deltas, inputs):
    """M_t = A_t M_0 + B_t S_0 + sum_{s<=t} K_ts G_s per layer, materialised: [B, H, L, o, i]."""
    a, b, k, _, _ = coefficients
    out = []
    for w, s, d, x in zip(m0, s0, deltas, inputs):
        g = d.unsqueeze(-1) * x.unsqueeze(-2)                             # [B, H, L, o, i]
        summed = torch.einsum("bhts,bhsoi->bhtoi", k, g)
        out.append(a[..., None, None] * w.unsqueeze(2) + b[..., None, None] * s.unsqueeze(2)
                   + summed)
    return out


def chunk_case(length=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    randn = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    shapes = [(o, i) for i, o in zip(LAYOUT.widths[:-1], LAYOUT.widths[1:])]
    m0 = [randn(2, 2, o, i) for o, i in shapes]
    s0 = [randn(2, 2, o, i) for o, i in shapes]
    deltas = [randn(2, 2, length, o) for o, _ in shapes]
    inputs = [randn(2, 2, length, i) for _, i in shapes]
    coefficients = chunk_coefficients(gates(2, 2, length, low=0.0, seed=seed + 1) * 0.1,
                                      gates(2, 2, length, seed=seed + 2),
                                      gates(2, 2, length, seed=seed + 3))
    return m0, s0, deltas, inputs, coefficients, randn(2, 2, length, LAYOUT.widths[0])


def test_masked_reads_are_the_reads_of_the_materialised_states():
    m0, s0, deltas, inputs, coefficients, u = chunk_case()
    states = token_states(m0, s0, coefficients, deltas, inputs)
    ours = masked_read(LAYOUT, m0, s0, coefficients, deltas, inputs, u)     # [B, H, L, d_L]
    for t in range(u.shape[2]):
        h = u[:, :, t].unsqueeze(-2)                                        # [B, H, 1, d_0]
        expected = batched_forward(LAYOUT, [w[:, :, t] for w in states], h).squeeze(-2)
        # per layer sums of at most L + 2 + width = 11 products of O(1) factors
        torch.testing.assert_close(ours[:, :, t], expected, rtol=0, atol=200 * U64)


@pytest.mark.parametrize("in_slots", [False, True], ids=["fresh", "into-slots"])
def test_the_chunk_end_is_the_last_tokens_state(in_slots):
    m0, s0, deltas, inputs, coefficients, _ = chunk_case(length=5)
    states = token_states(m0, s0, coefficients, deltas, inputs)
    slots = None
    if in_slots:
        stacked = start_stacks(tuple(m0), tuple(s0), 2)
        slots = chunk_slots(stacked, 1)
    on_chunk_axis = tuple(c.unsqueeze(2) for c in coefficients)            # [B, H, N = 1, ..]
    rows = last_row(on_chunk_axis, 0, 5)
    m, s = chunk_end(tuple(m0), tuple(s0), rows, deltas, inputs, slots)
    _, _, _, e, f = coefficients
    for w, v, expected, s_0, d, x in zip(m, s, states, s0, deltas, inputs):
        # sums of at most L + 2 = 7 products of O(1) factors per entry
        torch.testing.assert_close(w, expected[:, :, -1], rtol=0, atol=200 * U64)
        momentum = e[:, :, -1, None, None] * s_0 + torch.einsum(
            "bhs,bhso,bhsi->bhoi", f[:, :, -1], d, x)                     # S_L = E_L S_0 + sum F G
        torch.testing.assert_close(v, momentum, rtol=0, atol=200 * U64)
    if in_slots:
        assert all(w.data_ptr() == slot.data_ptr() for w, slot in zip(m, slots[0]))
        assert all(torch.equal(w[:, :, 1], v) for w, v in zip(stacked[0], m))
        assert all(torch.equal(w[:, :, 0], v) for w, v in zip(stacked[0], m0))


@pytest.mark.parametrize("segments", [
    pytest.param([(0, 4), (4, 8), (8, 10)], id="short-last"),
    pytest.param([(0, 1), (1, 5), (5, 9)], id="short-first"),
    pytest.param([(0, 3)], id="one-chunk")])
def test_last_rows_are_each_chunks_last_row(segments):
    width = max(t1 - t0 for t0, t1 in segments)
    n = len(segments)
    coefficients = chunk_coefficients(gates(2, 2, n, width, seed=4), gates(2, 2, n, width, seed=5),
                                      gates(2, 2, n, width, seed=6))
    for i, rows in enumerate(last_rows(coefficients, segments)):
        t0, t1 = segments[i]
        for ours, theirs in zip(rows, last_row(coefficients, i, t1 - t0)):
            assert torch.equal(ours, theirs)


def test_batched_forward_is_the_mlp_per_sequence():
    g = torch.Generator().manual_seed(7)
    weights = [torch.randn(2, 2, o, i, generator=g, dtype=torch.float64)
               for i, o in zip(LAYOUT.widths[:-1], LAYOUT.widths[1:])]
    h = torch.randn(2, 2, 4, 3, generator=g, dtype=torch.float64)
    ours = batched_forward(LAYOUT, weights, h)
    for b in range(2):
        for head in range(2):
            z = h[b, head]
            for i, w in enumerate(weights):
                z = z @ w[b, head].T
                z = mlp.ACTIVATIONS[LAYOUT.activation](z) if i < len(weights) - 1 else z
            torch.testing.assert_close(ours[b, head], z, rtol=0, atol=50 * U64)
