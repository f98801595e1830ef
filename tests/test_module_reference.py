"""module/reference.py's `once` levels (docs/language.md, "`once`"): one rule step per period
from the summed gradients of its units, the rule's arguments of the write unit, `period_mean`
the running mean over the period, a trailing partial period flushed or dropped. Checked
against a token loop written from that text, in float64, T = 7 with period 3 (a partial
period of one token)."""
from __future__ import annotations

import pytest
import torch

import nldsl

DT = torch.float64
SPEC = """module once_demo(dim: int >= 1) {{
  state W_g : [dim, 1] = normal(0.5)
  level memory every 3 tokens backprop partial {partial} once {{
    state M : [dim, dim] = 0
    gate beta = sigmoid(period_mean(x @ W_g))
    gate theta = sigmoid(x @ W_g)
    minimize theta * l2(M(x), x) by momentum(lr = 0.5, beta = beta, decay = 0.9)
    read y = M(x)
  }}
  out = y
}}"""


def once_loop(x: torch.Tensor, w_g: torch.Tensor, period: int, partial: str):
    """G = sum_u theta_u (M_s x_u - x_u) x_u^T at the period's start state M_s; at the period's
    end (or a flush) m <- beta m - 0.5 G, M <- 0.9 M + m with beta = sigmoid(mean_u x_u W_g)
    over the period's units; y_t = M_last-written x_t."""
    batch, steps, dim = x.shape
    m = torch.zeros(batch, dim, dim, dtype=DT)
    s, grad, logits, ys = torch.zeros_like(m), torch.zeros_like(m), [], []

    def step():
        beta = torch.sigmoid(torch.stack(logits).mean(0))                 # [B, 1]
        s.copy_(beta[..., None] * s - 0.5 * grad)
        m.copy_(0.9 * m + s)

    start = m.clone()
    for t in range(steps):
        xt = x[:, t]                                                      # [B, dim]
        theta = torch.sigmoid(xt @ w_g)                                   # [B, 1]
        r = torch.einsum("bij,bj->bi", start, xt) - xt
        grad = grad + theta[..., None] * torch.einsum("bi,bj->bij", r, xt)
        logits.append(xt @ w_g)
        if (t + 1) % period == 0:
            step()
            grad, logits, start = torch.zeros_like(m), [], m.clone()
        ys.append(torch.einsum("bij,bj->bi", m, xt))
    if partial == "flush" and logits:
        step()
    return torch.stack(ys, dim=1), m, s


@pytest.mark.parametrize("schedule", ["reference", "chunked"])
@pytest.mark.parametrize("partial", ["flush", "drop"])
def test_once_takes_one_rule_step_per_period(partial, schedule):
    module = nldsl.compile(SPEC.format(partial=partial), dim=3, schedule=schedule).double()
    x = torch.randn(2, 7, 3, generator=torch.Generator().manual_seed(0), dtype=DT)
    y, state = module(x)
    with torch.no_grad():
        y_loop, m, s = once_loop(x, module.W_g, 3, partial)
    torch.testing.assert_close(y, y_loop, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(state["memory"]["M"], m, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(state["memory"]["M_momentum"], s, rtol=1e-12, atol=1e-13)


CHANNEL_GATED = """module gated(dim: int >= 1) {{
  state W_a : [dim, dim] = normal(0.5)
  level memory every 1 token backprop{once} {{
    state M : mlp(dim -> 2 * dim -> dim, tanh)
    gate alpha = sigmoid(x @ W_a)
    minimize l2(M(x), x) by momentum(lr = 0.3 * alpha, beta = alpha, decay = alpha)
    read y = M(x)
  }}
  out = y
}}"""


def test_once_gates_channel_wise_as_every_token_writes_do():
    """A channel-wise lr, beta and decay (width dim on dim -> 2 dim -> dim: the first layer's
    columns, the last layer's rows) on a `once` level of period 1 take the same steps as on the
    plain level (tests/test_fuzz_deep.py FOUND "once-channel-gate": the once step applied the
    gate as it is, a shape error)."""
    torch.manual_seed(0)
    plain = nldsl.compile(CHANNEL_GATED.format(once=""), dim=3, schedule="reference").double()
    once = nldsl.compile(CHANNEL_GATED.format(once=" once"), dim=3, schedule="reference").double()
    once.load_state_dict(plain.state_dict())
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(1), dtype=DT)
    (y_plain, s_plain), (y_once, s_once) = plain(x), once(x)
    torch.testing.assert_close(y_once, y_plain, rtol=1e-12, atol=1e-13)
    for a, b in zip(s_once["memory"]["M"], s_plain["memory"]["M"]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


PRECONDITIONED = """module dgd1(dim: int >= 1, heads: int = 1 >= 1, head_dim: int = 1 >= 1) {{
  state Wk : [dim, {width}] = normal(0.5)
  state Wo : [{width}, dim] = normal(0.5)
  level memory every 1 token{heads} {{
    state M : mlp(head_dim -> head_dim -> head_dim, silu)
    key k = l2norm(x @ Wk)
    minimize l2(M(k), k) by dgd(lr = 0.1, precondition = true)
    read y = M(k)
  }}
  out = y @ Wo
}}"""


def test_a_preconditioned_write_with_head_dim_one_is_the_one_head_write():
    """dgd(precondition = true) with `heads 1` and head_dim 1 (the key a number per head) is the
    write without `heads` (tests/test_fuzz_deep.py FOUND "dgd-precondition-head-dim-1": the
    key lacked its width 1, a shape error)."""
    torch.manual_seed(0)
    plain = nldsl.compile(PRECONDITIONED.format(heads="", width="head_dim"), dim=3,
                          schedule="reference").double()
    headed = nldsl.compile(PRECONDITIONED.format(heads=" heads heads", width="heads * head_dim"),
                           dim=3, schedule="reference").double()
    headed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(1), dtype=DT)
    torch.testing.assert_close(headed(x)[0], plain(x)[0], rtol=1e-12, atol=1e-13)
