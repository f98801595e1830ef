"""The paper's optimizers against per-step references written here from the paper's equations.

All in float64 (u = 2^-53): a reference and a schedule compute the same recurrence in another
operation order, a few roundings per step over 7-20 steps of contracting or mildly growing
dynamics (measured: under 1e-15 relative), far inside assert_close's float64 default
(rtol = atol = 1e-7). M3's Newton-Schulz runs in float32: its own bound, below."""
import pytest
import torch

import nldsl
from nldsl.optim.kernels import newton_schulz
from nldsl.testing import newton_schulz_error_bound


def run(name, w0, grads_of, steps, **hparams):
    """Optimise a single tensor with grad_of(W, t), both schedules; returns both trajectories."""
    out = {}
    for schedule in ("reference", "fused"):
        torch.manual_seed(0)
        w = torch.nn.Parameter(w0.clone())
        opt = nldsl.optimizer(name, [w], schedule=schedule, **hparams)
        path = []
        for t in range(1, steps + 1):
            w.grad = grads_of(w.detach(), t)
            opt.step()
            path.append(w.detach().clone())
        out[schedule] = path
    return out


def rank_one_grads(w, t):
    """grad of 1/2 ||W x - y||^2 for one unit-norm sample: a rank-one delta x^T (eq. 57)."""
    gen = torch.Generator().manual_seed(t)
    x = torch.nn.functional.normalize(torch.randn(w.shape[1], generator=gen, dtype=w.dtype), dim=0)
    y = torch.randn(w.shape[0], generator=gen, dtype=w.dtype)
    return torch.outer(w @ x - y, x)


def test_dgd_is_eq_57():
    w0 = torch.randn(4, 3, dtype=torch.float64)
    lr, w = 0.3, w0.clone()
    expected = []
    for t in range(1, 11):
        g = rank_one_grads(w, t)
        x = torch.nn.functional.normalize(g.sum(0), dim=0)        # the unit input, up to sign
        eta = lr / (1 + lr)                                         # eta' = eta / (1 + eta ||x||^2)
        w = w @ (torch.eye(3, dtype=w.dtype) - eta * torch.outer(x, x)) - eta * g   # eq. 57
        expected.append(w.clone())
    for path in run("dgd", w0, rank_one_grads, 10, lr=lr).values():
        for got, want in zip(path, expected):
            torch.testing.assert_close(got, want)


def quadratic_grads(w, t):
    return 2 * w + torch.sin(torch.arange(w.numel(), dtype=w.dtype) + t)


def test_delta_momentum_is_eq_49_clean_form():
    w0 = torch.tensor([-3.5, 2.0], dtype=torch.float64)
    lr, beta, w, m = 0.05, 0.9, w0.clone(), torch.zeros(2, dtype=torch.float64)
    expected = []
    for t in range(1, 21):
        g = quadratic_grads(w, t)
        m = m * (beta - lr * g.dot(g)) - lr * g                     # eq. 49, lr on g^T g
        w = w + m
        expected.append(w.clone())
    for path in run("delta_momentum", w0, quadratic_grads, 20, lr=lr, beta=beta).values():
        for got, want in zip(path, expected):
            torch.testing.assert_close(got, want)


def test_dmgd_is_eq_50_with_an_mlp_momentum():
    w0 = torch.randn(3, 4, dtype=torch.float64)
    inner_lr, decay = 0.1, 0.9
    torch.manual_seed(0)                                            # the MLP's hidden layer init
    hidden = torch.randn(4, 4, dtype=torch.float64) / 2
    layers = [hidden, torch.zeros(4, 4, dtype=torch.float64)]
    mlp = lambda ws, u: torch.nn.functional.silu(u @ ws[0].T) @ ws[1].T
    w, expected = w0.clone(), []
    for t in range(1, 8):
        g = quadratic_grads(w.flatten(), t).reshape(3, 4)
        ws = [l.clone().requires_grad_() for l in layers]
        grads = torch.autograd.grad((mlp(ws, g) * g).sum(), ws)     # grad of <m(u), u>, u = g
        layers = [decay * l - inner_lr * d for l, d in zip(layers, grads)]   # eq. 50
        w = w + mlp(layers, g)
        expected.append(w.clone())
    grads_of = lambda w, t: quadratic_grads(w.flatten(), t).reshape(3, 4)
    for path in run("dmgd", w0, grads_of, 7, inner_lr=inner_lr, decay=decay).values():
        for got, want in zip(path, expected):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("form", ["sum", "ema"])
def test_m3_is_algorithm_1(form):
    """Everything in float64 but Newton-Schulz, which runs in float32 here and in the spec
    (per matrix here and in `reference`, batched in `fused`): the two computed NS(M) are each
    within `newton_schulz_error_bound` (float32, 3x5: 6.4e-3 in Frobenius norm, so in every
    entry) of the exact iteration, so every step's W may differ by
    lr (1 + alpha) 2 bound / (sqrt(v) + eps) per entry; the tolerance sums that over the steps,
    plus assert_close's float64 default for the rest."""
    w0 = torch.randn(3, 5, dtype=torch.float64)
    lr, (b1, b2, b3), alpha, eps, f = 0.01, (0.9, 0.99, 0.8), 0.5, 1e-8, 3
    w = w0.clone()
    m1, v, m2 = (torch.zeros_like(w) for _ in range(3))
    pending, o2, expected, tolerances = [], newton_schulz(torch.zeros_like(w)), [], []
    ns_bound, drift = newton_schulz_error_bound((3, 5), 5, "quintic", "float32"), torch.zeros_like(w)
    for t in range(1, 13):
        g = quadratic_grads(w.flatten(), t).reshape(3, 5)
        if form == "sum":
            m1, v = m1 + b1 * g, v + b2 * g * g                     # lines 7-8
        else:
            m1, v = b1 * m1 + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        w = w - lr * (newton_schulz(m1) + alpha * o2) / (v.sqrt() + eps)   # lines 9-10
        drift = drift + lr * (1 + alpha) * 2 * ns_bound / (v.sqrt() + eps)
        tolerances.append(drift.clone())
        pending.append(g)
        if t % f == 0:                                              # line 3, next outer iteration
            total = sum(pending)
            m2 = m2 + b3 * total if form == "sum" else b3 * m2 + (1 - b3) * total / f
            o2, pending = newton_schulz(m2), []                     # line 4
        expected.append(w.clone())
    grads_of = lambda w, t: quadratic_grads(w.flatten(), t).reshape(3, 5)
    paths = run("m3", w0, grads_of, 12, lr=lr, betas=(b1, b2, b3), alpha=alpha, eps=eps, f=f,
                form=form)
    for path in paths.values():
        for got, want, drift in zip(path, expected, tolerances):
            assert ((got - want).abs() <= drift + 1e-7 + 1e-7 * want.abs()).all()


def test_paper_form_adam_is_eq_105():
    w0 = torch.randn(3, 2, dtype=torch.float64)
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    w, big_m, h, expected = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0), []
    for t in range(1, 11):
        g = quadratic_grads(w.flatten(), t).reshape(3, 2)
        big_m, h = big_m + b1 * g, h + b2 * g * g                    # eq. 102's sums
        w = w - lr / b2 ** 0.5 * big_m / (h.sqrt() + eps)             # eq. 105
        expected.append(w.clone())
    grads_of = lambda w, t: quadratic_grads(w.flatten(), t).reshape(3, 2)
    for path in run("examples/adam_paper.nl", w0, grads_of, 10, lr=lr).values():
        for got, want in zip(path, expected):
            torch.testing.assert_close(got, want)
