"""Issue 9 §4: each linear-family spec computes its paper's recurrence.

The token loops here are written from the equations (the spec headers cite them), with plain
torch and the module's parameters (m.Wk, m.k_conv, ...), never with nldsl's runtime: the causal
conv is torch's conv1d with left padding (as flash-linear-attention's ShortConvolution), heads
are the `(h d)` channel split of fla's `rearrange`, and the norms are written out with the eps
of nldsl/runtime/functions.py's documentation (rmsnorm: 1e-5 inside the root). Both schedules
are compared with them.

Tolerance: `rounding_bound(T, width, block)` (tests/_module_cases.py): the loop and either
schedule evaluate the same real function with differently associated float64 sums.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _module_cases import U64, assert_close, build, forbid_fallback, inputs, rounding_bound

RMS_EPS = 1e-5


def causal_conv(a: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """y_t[c] = sum_j kernel[c, j] a_{t-W+1+j}[c], a_{<1} = 0. a [B, T, C], kernel [C, W]."""
    width = kernel.shape[1]
    padded = F.pad(a.transpose(1, 2), (width - 1, 0))                 # [B, C, W-1+T]
    return F.conv1d(padded, kernel.unsqueeze(1), groups=kernel.shape[0]).transpose(1, 2)


def split(a: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, H*d] -> [B, T, H, d]: head h is channels h*d .. (h+1)*d - 1."""
    return a.reshape(*a.shape[:-1], heads, a.shape[-1] // heads)


def l2n(a):
    return a / a.norm(dim=-1, keepdim=True)


def rms(a):
    return a / torch.sqrt(a.pow(2).mean(-1, keepdim=True) + RMS_EPS)


def loop(m0, steps, update, read):
    """M_t = update(t, M_{t-1}); y_t = read(t, M_t). M: [B, H, d_v, d_k]."""
    m, ys = m0, []
    for t in range(steps):
        m = update(t, m)
        ys.append(read(t, m))
    return torch.stack(ys, dim=1), m                                  # [B, T, H, d_v]


def apply(m, u):
    """M u per batch and head: [B, H, dv, dk] x [B, H, dk] -> [B, H, dv]."""
    return torch.einsum("bhvk,bhk->bhv", m, u)


def outer(a, b):
    return torch.einsum("bhv,bhk->bhvk", a, b)


# -- the papers' equations ---------------------------------------------------------------------

def linear_attention(m, x, heads):
    """M_t = decay M_{t-1} + lr v_t k_t^T, y_t = M_t q_t (NL eqs. 14-16, 64)."""
    lr, decay = m.program.hparams["lr"], m.program.hparams["decay"]
    k, v, q = (split(x @ w, heads) for w in (m.Wk, m.Wv, m.Wq))
    b = x.shape[0]
    m0 = x.new_zeros(b, heads, v.shape[-1], k.shape[-1])
    y, mt = loop(m0, x.shape[1],
                 lambda t, s: decay * s + lr * outer(v[:, t], k[:, t]),
                 lambda t, s: apply(s, q[:, t]))
    return y.flatten(2) @ m.Wo, mt


def deltanet_recurrence(m, x, heads):
    """M_t = M_{t-1} - beta_t (M_{t-1} k_t - v_t) k_t^T (NL eq. 65), unit k and q."""
    k, q = l2n(split(x @ m.Wk, heads)), l2n(split(x @ m.Wq, heads))
    v = split(x @ m.Wv, heads)
    beta = torch.sigmoid(x @ m.W_beta)                                  # [B, T, H]
    m0 = x.new_zeros(x.shape[0], heads, v.shape[-1], k.shape[-1])
    y, mt = loop(m0, x.shape[1],
                 lambda t, s: s - beta[:, t, :, None, None] * outer(apply(s, k[:, t]) - v[:, t], k[:, t]),
                 lambda t, s: apply(s, q[:, t]))
    return y.flatten(2) @ m.Wo, mt


def deltanet(m, x, heads):
    """fla's DeltaNet layer: q, k, v = SiLU(conv(x W)), q and k l2-normalised, the delta rule,
    RMSNorm per head with a shared scale, Wo."""
    k = l2n(split(F.silu(causal_conv(x @ m.Wk, m.k_conv)), heads))
    v = split(F.silu(causal_conv(x @ m.Wv, m.v_conv)), heads)
    q = l2n(split(F.silu(causal_conv(x @ m.Wq, m.q_conv)), heads))
    beta = torch.sigmoid(x @ m.W_beta)
    m0 = x.new_zeros(x.shape[0], heads, v.shape[-1], k.shape[-1])
    y, mt = loop(m0, x.shape[1],
                 lambda t, s: s - beta[:, t, :, None, None] * outer(apply(s, k[:, t]) - v[:, t], k[:, t]),
                 lambda t, s: rms(apply(s, q[:, t])) * m.o_norm)
    return y.flatten(2) @ m.Wo, mt


def _mamba2_decay(m, x):
    """alpha_t = exp(-exp(A_log) softplus(x_t W_a + dt_bias)), one per head: [B, T, H]."""
    return torch.exp(-torch.exp(m.A_log) * F.softplus(x @ m.W_a + m.dt_bias))


def _gated_delta(s, alpha, beta, k, v):
    """M_t = alpha M_{t-1} (I - beta k k^T) + beta v k^T (Gated DeltaNet)."""
    eye = torch.eye(k.shape[-1], dtype=k.dtype)
    alpha, beta = alpha[..., None, None], beta[..., None, None]
    return alpha * s @ (eye - beta * outer(k, k)) + beta * outer(v, k)


def gated_deltanet_recurrence(m, x, heads):
    k, q = l2n(split(x @ m.Wk, heads)), l2n(split(x @ m.Wq, heads))
    v = split(x @ m.Wv, heads)
    alpha, beta = _mamba2_decay(m, x), torch.sigmoid(x @ m.W_beta)
    m0 = x.new_zeros(x.shape[0], heads, v.shape[-1], k.shape[-1])
    y, mt = loop(m0, x.shape[1],
                 lambda t, s: _gated_delta(s, alpha[:, t], beta[:, t], k[:, t], v[:, t]),
                 lambda t, s: apply(s, q[:, t]))
    return y.flatten(2) @ m.Wo, mt


def gated_deltanet(m, x, heads):
    """fla's GatedDeltaNet layer: convs + SiLU, l2-normalised q, k; values of head_v_dim;
    Mamba-2 decay; gated RMSNorm rmsnorm(y) * o_norm * silu(x W_g) per head; Wo."""
    k = l2n(split(F.silu(causal_conv(x @ m.Wk, m.k_conv)), heads))
    v = split(F.silu(causal_conv(x @ m.Wv, m.v_conv)), heads)
    q = l2n(split(F.silu(causal_conv(x @ m.Wq, m.q_conv)), heads))
    alpha, beta = _mamba2_decay(m, x), torch.sigmoid(x @ m.W_beta)
    g = split(F.silu(x @ m.W_g), heads)
    m0 = x.new_zeros(x.shape[0], heads, v.shape[-1], k.shape[-1])
    y, mt = loop(m0, x.shape[1],
                 lambda t, s: _gated_delta(s, alpha[:, t], beta[:, t], k[:, t], v[:, t]),
                 lambda t, s: rms(apply(s, q[:, t])) * m.o_norm * g[:, t])
    return y.flatten(2) @ m.Wo, mt


PAPERS = {
    "linear_attention": linear_attention,
    "deltanet": deltanet,
    "gated_deltanet": gated_deltanet,
    "deltanet_recurrence": deltanet_recurrence,
    "gated_deltanet_recurrence": gated_deltanet_recurrence,
}
WIDTH = {"linear_attention": 3, "deltanet": 3, "gated_deltanet": 5, "deltanet_recurrence": 4,
         "gated_deltanet_recurrence": 4}


@pytest.mark.parametrize("schedule", ["reference", "chunked"])
@pytest.mark.parametrize("spec", list(PAPERS))
def test_spec_is_its_papers_recurrence(spec, schedule, monkeypatch):
    steps, batch, heads, block = 37, 2, 3, 16
    m = build(spec, schedule, block_size=block, heads=heads, seed=4)
    if schedule == "chunked":
        assert m.fast_paths
        forbid_fallback(monkeypatch)
    x = inputs(batch, steps, m.program.dim, 4)
    with torch.no_grad():
        y, state = m(x)
        y_paper, m_paper = PAPERS[spec](m, x, heads)
    bound = rounding_bound(steps, WIDTH[spec], block)
    assert_close(y, y_paper, bound, f"{spec} {schedule} y")
    assert_close(state["memory"]["M"], m_paper, bound, f"{spec} {schedule} final M")
    assert state["_stream"]["t"] == steps


def test_linear_attention_hyperparameters_are_used():
    """lr and decay reach the recurrence: lr = 0.7, decay = 0.9 (SPECS) differ from the
    defaults by far more than the rounding bound, and the loop with the defaults does not
    match the module."""
    m = build("linear_attention", "reference", heads=2, seed=1)
    x = inputs(1, 20, 8, 1)
    with torch.no_grad():
        y, _ = m(x)
        m.program.hparams.update(lr=1.0, decay=1.0)   # the loop reads them from here only
        y_defaults, _ = linear_attention(m, x, 2)
    assert (y - y_defaults).abs().max() > 1e-3 * y.abs().max()


@pytest.mark.parametrize("steps", [pytest.param(2, id="T2-shorter-than-window"),
                                   pytest.param(9, id="T9")])
@pytest.mark.parametrize("schedule", ["reference", "chunked"])
@pytest.mark.parametrize("spec", ["deltanet", "gated_deltanet"])
def test_conv_caches_are_the_last_inputs(spec, schedule, steps):
    """state["_stream"]["<name>_conv"] holds the last W-1 inputs of that conv ([B, W-1, C]),
    zeros before the stream's start."""
    m = build(spec, schedule, heads=2, seed=2)
    width = m.program.convs[next(iter(m.program.convs))].width
    x = inputs(2, steps, m.program.dim, 2)
    with torch.no_grad():
        _, state = m(x)
        for name, w in (("k_conv", m.Wk), ("v_conv", m.Wv), ("q_conv", m.Wq)):
            a = F.pad(x @ w, (0, 0, width - 1, 0))                   # zeros before t = 1
            expected = a[:, -(width - 1):]
            # x @ W is an inner product of length dim: within dim * u of the exact value in
            # either evaluation (torch may pick another matmul kernel for the lifted weight).
            assert_close(state["_stream"][name], expected, 2 * m.program.dim * U64, name)
