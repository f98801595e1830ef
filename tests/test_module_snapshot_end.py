"""module/snapshot_end.py: eq. 88's WY end (delta_end) equals its token loop, with K W_0^T
computed or given (the forward's pre-activations), for gates that are 0 and a step count above
the triangular solve's block size; float64, tolerance from the loop's length. A `layernorm`
memory's end states (gamma's gradient is elementwise, not an outer product) equal the reference
schedule's: outputs, final states, gradients of x and every parameter, float64, tolerance
`deep_bound`."""
from __future__ import annotations

import pytest
import torch

from _module_cases import forbid_fallback, inputs, randomize
from nldsl.lower.snapshot_forms import SnapshotForm
from nldsl.module import compile as compile_module
from nldsl.module.snapshot_end import delta_end

from test_module_deep_memories import deep_bound
from test_module_snapshot_chunk import assert_schedules_agree


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


def normed(*body: str, memory: str = "mlp(head_dim -> head_dim, layernorm)", head_dim: int = 3,
           read: str = "M(k)") -> str:
    """A snapshot-form level (chunk 3, every value at the chunk start, the read before write)
    whose memory M is a `layernorm` mlp, written by `body`."""
    return (f"module normed(dim: int = 3 >= 1, head_dim: int = {head_dim} >= 1) {{\n"
            "  state Wk : [dim, head_dim] = normal(0.5)\n"
            "  state Wv : [dim, head_dim] = normal(0.5)\n"
            "  state Wh : [dim, 1] = normal(1.0)\n  state Wo : [head_dim, dim] = normal(0.5)\n"
            f"  level mem every 1 token chunk 3 {{\n    state M : {memory}\n"
            "    key k = l2norm(x @ Wk)\n    value v = x @ Wv\n    gate h = sigmoid(x @ Wh)\n"
            + "".join(f"    {line}\n" for line in body)
            + f"    read y = {read} before write\n  }}\n  out = y @ Wo\n}}\n")


def assert_normed_schedules_agree(text: str, monkeypatch, steps: int = 7) -> dict:
    """The spec's chunked module takes the snapshot form and equals the reference (B 2, a
    length the chunk does not divide); the reference's final state by part, every memory's
    gamma asserted moved off its initial 0 (but at width 1, where LN(z) = 0: no gradient)."""
    made = []
    for schedule in ("reference", "chunked"):
        torch.manual_seed(1)
        made.append(randomize(compile_module(text, schedule=schedule).to(torch.float64), 2))
    assert isinstance(made[1].fast_paths.get("mem"), SnapshotForm)
    forbid_fallback(monkeypatch)
    x = inputs(2, steps, 3, 1).requires_grad_()
    state = assert_schedules_agree(*made, x, deep_bound(steps, 6))
    for name, layout in ((n, s.mlp) for n, s in made[0].program.levels[0].states.items()):
        gamma = state[f"mem.{name}.{len(layout.layers)}"]                   # [B, d_L]
        assert gamma.abs().max() > 1e-3 or layout.widths[-1] == 1, f"{name}: gamma did not move"
    return state


#: Gradient writes of `layernorm` memories in the snapshot form (tests/test_fuzz_deep.py FOUND
#: "layernorm-snapshot-gd"): gamma's end was the layers' outer-product sum (a shape error).
NORMED_WRITES = {
    "gd": normed("minimize l2(M(k), v) by gd(lr = 0.3, decay = h)"),
    "dgd-precondition": normed("minimize l2(M(k), v) by dgd(lr = 0.3, decay = h, "
                               "precondition = true)"),
    "two-applications": normed("minimize l2(M(M(k)), v) by gd(lr = 0.3)"),
    "two-layers": normed("minimize l2(M(k), v) by gd(lr = 0.3, decay = h)",
                         memory="mlp(head_dim -> 2 * head_dim -> head_dim, silu, layernorm)"),
    "head-dim-1": normed("minimize l2(M(k), v) by gd(lr = 0.3, decay = h)", head_dim=1),
    "state-like": normed("state N like M", "M: minimize l2(tanh(M(k)), v) by dgd(lr = 0.3)",
                         "N: minimize l2(N(v), k) by gd(lr = 0.3, decay = h)",
                         read="M(k) + N(k)"),
}


@pytest.mark.parametrize("text", [pytest.param(t, id=n) for n, t in NORMED_WRITES.items()])
def test_a_layernorm_memorys_end_states_equal_the_reference(text, monkeypatch):
    assert_normed_schedules_agree(text, monkeypatch)
