"""module/snapshot_end.py: eq. 88's WY end (delta_end) equals its token loop, with K W_0^T
computed or given (the forward's pre-activations), for gates that are 0 and a step count above
the triangular solve's block size; float64, tolerance from the loop's length."""
from __future__ import annotations

import pytest
import torch

from nldsl.module.snapshot_end import delta_end


def token_loop(w0, a, c, k, w):
    """W_t = W_{t-1} (a_t I - c_t k_t k_t^T) + w_t k_t^T, token by token."""
    out = w0.clone()
    for t in range(a.shape[1]):
        kt, wt = k[:, t].unsqueeze(-1), w[:, t].unsqueeze(-1)            # [G, d_0, 1], [G, d_1, 1]
        out = a[:, t, None, None] * out - c[:, t, None, None] * (out @ kt) @ kt.mT + wt @ kt.mT
    return out


@pytest.mark.parametrize("steps, zero_gate", [
    pytest.param(8, False, id="L8"),
    pytest.param(16, True, id="L16-a-gate-of-0"),
    pytest.param(1, False, id="L1"),
])
@pytest.mark.parametrize("given", [False, True], ids=["pre-computed", "pre-given"])
def test_delta_end_is_the_token_loop(steps, zero_gate, given):
    g, d_1, d_0 = 3, 5, 4
    gen = torch.Generator().manual_seed(steps)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)
    w0, k, w = rand(g, d_1, d_0), rand(g, steps, d_0), rand(g, steps, d_1)
    k = k / k.norm(dim=-1, keepdim=True)                                   # unit keys (eq. 57)
    a = torch.rand(g, steps, generator=gen, dtype=torch.float64)
    c = 0.5 * torch.rand(g, steps, generator=gen, dtype=torch.float64)
    if zero_gate:
        a[:, steps // 2] = 0.0
    pre = torch.bmm(k, w0.mT) if given else None                          # K W_0^T [G, L, d_1]
    expected = token_loop(w0, a, c, k, w)
    got = delta_end(w0.clone(), a, c, k, w, pre)
    torch.testing.assert_close(got, expected, rtol=0, atol=steps * 1e-13)
