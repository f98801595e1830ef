"""The paper oracles of tests/paper_loops.py, checked on their own: each against a closed form
written out by hand, a limit of its gates, or the library it copies.

The oracles are what the compiled deep memories are tested against, so a bug here would hide a
bug there. Float64, fixed seeds, odd sizes (T = 7 with chunk 3 leaves a partial chunk).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import paper_loops as pl
from _neural_memory import randomized_neural_memory

DT = torch.float64
TOL = dict(rtol=1e-10, atol=1e-12)


def draw(seed: int, batch=2, heads=3, steps=7, d=4, hidden=None, layers=2):
    """k, q unit (as the specs l2-normalise them), v O(1), gates in (0, 1), and per-head MLP
    weights [H, d_out, d_in] ~ N(0, 1/d_in)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=DT)
    k = F.normalize(rnd(batch, heads, steps, d), dim=-1)                # [B, H, T, d]
    q = F.normalize(rnd(batch, heads, steps, d), dim=-1)
    v = rnd(batch, heads, steps, d)
    gate = lambda: torch.sigmoid(rnd(batch, heads, steps))              # [B, H, T]
    widths = [d] + [hidden or 4 * d] * (layers - 1) + [d]
    weights = [rnd(heads, o, i) / math.sqrt(i) for i, o in zip(widths, widths[1:])]
    return dict(k=k, v=v, q=q, gates=[gate() for _ in range(4)], weights=weights)


def matvec(w, u):                                                       # [B, H, o, i] x [B, H, i]
    return torch.einsum("bhoi,bhi->bho", w, u)


def outer(a, b):
    return torch.einsum("bho,bhi->bhoi", a, b)


# -- Titans ----------------------------------------------------------------------------------------

def matrix_memory_by_hand(k, q, w0, chunk, step):
    """The token loop of a matrix memory with momentum, as the papers write it: W_0 = w0 for
    every sequence, S_0 = 0; at token t, (W, S) <- step(t, W_{t'}, W, S) with W_{t'} the
    chunk-start matrix, then y_t = W q_t. Returns (y, W, S)."""
    w = w0.expand(k.shape[0], *w0.shape).clone()
    s = torch.zeros_like(w)
    ys = []
    for t in range(k.shape[2]):
        if t % chunk == 0:
            w_start = w
        w, s = step(t, w_start, w, s)
        ys.append(matvec(w, q[:, :, t]))
    return torch.stack(ys, 2), w, s


def titans_linear_by_hand(k, v, q, theta, eta, alpha, w0, chunk):
    """Titans eqs. 13-16 for the matrix memory M(u) = W u, the gradient of 1/2 ||W k - v||^2
    written out: (W_{t'} k_t - v_t) k_t^T with W_{t'} the chunk-start matrix."""
    def step(t, w_start, w, s):
        g = outer(matvec(w_start, k[:, :, t]) - v[:, :, t], k[:, :, t])
        s = eta[:, :, t, None, None] * s - theta[:, :, t, None, None] * g
        return (1 - alpha[:, :, t, None, None]) * w + s, s
    return matrix_memory_by_hand(k, q, w0, chunk, step)


@pytest.mark.parametrize("chunk", [pytest.param(1, id="chunk1"), pytest.param(3, id="chunk3-T7"),
                                   pytest.param(10, id="chunk-longer-than-T")])
def test_titans_linear_memory_is_the_delta_rule_with_momentum(chunk):
    c = draw(0, layers=1)
    theta, eta, alpha, _ = c["gates"]
    y, (w,), (s,) = pl.titans_loop(c["k"], c["v"], c["q"], theta, eta, alpha, c["weights"], chunk,
                                   residual=False)
    y_hand, w_hand, s_hand = titans_linear_by_hand(c["k"], c["v"], c["q"], theta, eta, alpha,
                                                   c["weights"][0], chunk)
    torch.testing.assert_close(y, y_hand, **TOL)
    torch.testing.assert_close(w, w_hand, **TOL)
    torch.testing.assert_close(s, s_hand, **TOL)


def test_titans_mlp_step_is_the_hand_derived_gradient():
    """One token, 2-layer residual MLP with tanh: M_1 = (1 - alpha) M_0 - theta g with
    r = M_0(k) - v, g_2 = r tanh(h)^T, g_1 = ((W_2^T r) * (1 - tanh(h)^2)) k^T, h = W_1 k."""
    c = draw(1, steps=1, d=3, hidden=5)
    theta, eta, alpha, _ = c["gates"]
    k, v, q = (c[n][:, :, 0] for n in "kvq")
    w1, w2 = (w.expand(2, *w.shape) for w in c["weights"])
    h = matvec(w1, k)
    r = k + matvec(w2, torch.tanh(h)) - v
    g2 = outer(r, torch.tanh(h))
    g1 = outer(torch.einsum("bhoi,bho->bhi", w2, r) * (1 - torch.tanh(h) ** 2), k)
    a, th = alpha[:, :, 0, None, None], theta[:, :, 0, None, None]
    w1_new, w2_new = (1 - a) * w1 - th * g1, (1 - a) * w2 - th * g2
    y, (o1, o2), _ = pl.titans_loop(c["k"], c["v"], c["q"], theta, eta, alpha, c["weights"], 1,
                                    activation=torch.tanh)
    torch.testing.assert_close(o1, w1_new, **TOL)
    torch.testing.assert_close(o2, w2_new, **TOL)
    torch.testing.assert_close(y[:, :, 0], q + matvec(w2_new, torch.tanh(matvec(w1_new, q))), **TOL)


def test_titans_alpha_one_forgets_everything_but_the_momentum():
    """alpha = 1: M_t = S_t (eq. 13), so the final memory is the final momentum."""
    c = draw(2)
    theta, eta, _, _ = c["gates"]
    _, w, s = pl.titans_loop(c["k"], c["v"], c["q"], theta, eta, torch.ones_like(theta),
                             c["weights"], 3)
    for wi, si in zip(w, s):
        torch.testing.assert_close(wi, si, rtol=0, atol=0)
        assert si.abs().max() > 1e-3


def test_titans_theta_zero_leaves_the_memory_at_its_initial_state():
    c = draw(3)
    _, eta, _, _ = c["gates"]
    zero = torch.zeros_like(eta)
    y, w, s = pl.titans_loop(c["k"], c["v"], c["q"], zero, eta, zero, c["weights"], 3)
    w0 = pl.expand(c["weights"], 2)
    for wi, w0i, si in zip(w, w0, s):
        torch.testing.assert_close(wi, w0i, rtol=0, atol=0)
        assert not si.any()
    y0 = torch.stack([pl.mlp(w0, c["q"][:, :, t]) for t in range(7)], 2)
    torch.testing.assert_close(y, y0, rtol=0, atol=0)


def test_titans_chunk_start_snapshot_differs_from_chunk_1():
    """chunk 3 (gradients at M_0, M_3, M_6) is not chunk 1 (gradients at M_{t-1}), by far more
    than rounding; and the first token of each chunk agrees with chunk 1 only at t = 0."""
    c = draw(4)
    theta, eta, alpha, _ = c["gates"]
    theta = theta * 4                                                   # large steps, visible lag
    y1, w1, _ = pl.titans_loop(c["k"], c["v"], c["q"], theta, eta, alpha, c["weights"], 1)
    y3, w3, _ = pl.titans_loop(c["k"], c["v"], c["q"], theta, eta, alpha, c["weights"], 3)
    torch.testing.assert_close(y1[:, :, 0], y3[:, :, 0], **TOL)         # t = 0: both at M_0
    assert (y1[:, :, 1:] - y3[:, :, 1:]).abs().amax(dim=(0, 1, 3)).min() > 1e-6
    assert max((a - b).abs().max() for a, b in zip(w1, w3)) > 1e-4


def test_titans_stream_continues_across_calls():
    """Two calls split at a chunk boundary (the second from the first's weights [B, H, o, i] and
    momentum) equal one call."""
    c = draw(5, steps=9)
    theta, eta, alpha, _ = c["gates"]
    y, w, s = pl.titans_loop(c["k"], c["v"], c["q"], theta, eta, alpha, c["weights"], 3)
    cut = lambda a, sl: a[:, :, sl]
    ya, wa, sa = pl.titans_loop(*(cut(c[n], slice(0, 6)) for n in "kvq"),
                                *(cut(g, slice(0, 6)) for g in (theta, eta, alpha)), c["weights"], 3)
    yb, wb, sb = pl.titans_loop(*(cut(c[n], slice(6, 9)) for n in "kvq"),
                                *(cut(g, slice(6, 9)) for g in (theta, eta, alpha)), wa, 3,
                                momentum0=sa)
    torch.testing.assert_close(torch.cat([ya, yb], 2), y, **TOL)
    for a, b in zip(w + s, wb + sb):
        torch.testing.assert_close(a, b, **TOL)


def test_titans_outer_gradients_flow_through_the_writes():
    """The inner gradient is differentiable (create_graph): d y / d k exists through the write
    and matches central differences."""
    c = draw(6, batch=1, heads=1, steps=4, d=3, hidden=4)
    theta, eta, alpha, _ = c["gates"]
    k = c["k"].clone().requires_grad_()
    probe = torch.randn(c["q"].shape, generator=torch.Generator().manual_seed(0), dtype=DT)
    f = lambda kk: (pl.titans_loop(kk, c["v"], c["q"], theta, eta, alpha, c["weights"], 2)[0]
                    * probe).sum()
    (grad,) = torch.autograd.grad(f(k), k)
    h = 1e-6
    e = torch.zeros_like(k)
    e[0, 0, 1, 2] = h                                                   # token 1: read at 1-3
    numeric = (f(c["k"] + e) - f(c["k"] - e)) / (2 * h)
    assert abs(grad[0, 0, 1, 2] - numeric) < 1e-7 * max(1.0, abs(numeric))
    assert abs(grad[0, 0, 1, 2]) > 1e-4


# -- titans-pytorch --------------------------------------------------------------------------------

TITANS_PYTORCH_CASES = [
    # id, (B, T, dim, heads, dim_head, chunk, batch_size)
    pytest.param((2, 7, 8, 2, 4, 3, None), id="default-T7-chunk3-partial"),
    pytest.param((2, 7, 8, 2, 4, 3, 3), id="batch=chunk-T7-chunk3"),
    pytest.param((1, 11, 9, 3, 3, 2, 4), id="batch=2chunks-T11-chunk2"),
    pytest.param((2, 5, 6, 2, 3, 1, None), id="default-chunk1"),
    pytest.param((1, 6, 4, 1, 4, 2, 2), id="heads1-no-gate-no-combine"),
    pytest.param((1, 2, 6, 2, 3, 3, None), id="T-shorter-than-chunk"),
]


@pytest.mark.parametrize("case", TITANS_PYTORCH_CASES)
def test_titans_pytorch_loop_is_neural_memory(case):
    """titans_pytorch_loop, written from the semantics digest, matches the library's forward
    (output, final memory, final momentum) and its gradients with respect to x and every
    parameter, in float64."""
    batch, steps, dim, heads, dim_head, chunk, batch_size = case
    mem = randomized_neural_memory(7, dim, heads, dim_head, chunk, batch_size)
    x = torch.randn(batch, steps, dim, generator=torch.Generator().manual_seed(1),
                    dtype=DT).requires_grad_()
    y_lib, state = mem(x)
    p = pl.titans_pytorch_params(mem)
    y, memory, momentum = pl.titans_pytorch_loop(x, p, heads=heads, chunk_size=chunk,
                                                 batch_size=batch_size)
    torch.testing.assert_close(y, y_lib, rtol=1e-10, atol=1e-12)

    last_update, last_momentum = state.states
    names = mem.memory_model_parameter_names                    # ['norm.gamma', 'model.weights.i']
    mine = lambda d, n: (d["gamma"] if n == "norm.gamma"
                         else d["layers"][int(n.rsplit(".", 1)[1])].transpose(-1, -2))
    for n in names:
        lib_w, lib_m = last_update[n], last_momentum[n][0]      # [(b h), ...]; momentum [o, (b h), ...]
        torch.testing.assert_close(mine(memory, n).flatten(0, 1), lib_w, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(mine(momentum, n).flatten(0, 1), lib_m, rtol=1e-10, atol=1e-12)

    probe = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=DT)
    params = [x] + [q for q in mem.parameters()]
    g_lib = torch.autograd.grad((y_lib * probe).sum(), params, allow_unused=True)
    g_mine = torch.autograd.grad((y * probe).sum(), params, allow_unused=True)
    used = 0
    for (name, _), a, b in zip([("x", x)] + list(mem.named_parameters()), g_lib, g_mine):
        assert (a is None) == (b is None), name
        if a is not None:
            used += 1
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-11, msg=name)
    assert used >= (8 if steps < chunk else 15)     # nothing is stored before a full chunk


def test_titans_pytorch_default_mode_takes_every_gradient_at_the_initial_weights():
    """The semantic gap the digest describes: by default the loop's chunks all see W_0, so
    changing batch_size to the chunk size (eq. 16) changes the output."""
    mem = randomized_neural_memory(8, 8, 2, 4, 2, None)
    x = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=DT)
    p = pl.titans_pytorch_params(mem)
    with torch.no_grad():
        y_default, _, _ = pl.titans_pytorch_loop(x, p, heads=2, chunk_size=2)
        y_eq16, _, _ = pl.titans_pytorch_loop(x, p, heads=2, chunk_size=2, batch_size=2)
    # tokens 0..2 read W_0 or the first chunk's write, identical in both modes
    torch.testing.assert_close(y_default[:, :3], y_eq16[:, :3], **TOL)
    assert (y_default[:, 5:] - y_eq16[:, 5:]).abs().max() > 1e-4


# -- Miras: Moneta, Yaad, Memora ---------------------------------------------------------------------

READS = [pytest.param("own_write", id="read-own-write"),
         pytest.param("chunk_start", id="read-chunk-start")]


@pytest.mark.parametrize("read", READS)
@pytest.mark.parametrize("p, q", [pytest.param(3, 4, id="p3-q4"), pytest.param(2, 3, id="p2-q3")])
def test_moneta_linear_memory_by_hand(p, q, read):
    """Matrix memory, chunk 3, T = 7: A_t = alpha A_{t-1} - eta (sign(r)|r|^{p-1}) k^T with
    r = W_{t'} k - v, W = A / (||A||_q^{q-2} + eps) (the l_p gradient written out)."""
    c = draw(10, layers=1)
    eta, alpha, _, _ = c["gates"]
    eps = 1e-6
    normalize = lambda a: a / (a.abs().pow(q).sum((-2, -1), keepdim=True) ** ((q - 2) / q) + eps)
    a = c["weights"][0].expand(2, *c["weights"][0].shape).clone()
    ys = []
    for t in range(7):
        if t % 3 == 0:
            w_start = normalize(a)
        r = matvec(w_start, c["k"][:, :, t]) - c["v"][:, :, t]
        a = alpha[:, :, t, None, None] * a - eta[:, :, t, None, None] * outer(
            torch.sign(r) * r.abs() ** (p - 1), c["k"][:, :, t])
        ys.append(matvec(normalize(a) if read == "own_write" else w_start, c["q"][:, :, t]))
    y, (w,), (a_out,) = pl.moneta_loop(c["k"], c["v"], c["q"], eta, alpha, c["weights"], 3,
                                       bias_p=p, retention_q=q, eps=eps, residual=False, read=read)
    torch.testing.assert_close(y, torch.stack(ys, 2), **TOL)
    torch.testing.assert_close(a_out, a, **TOL)
    torch.testing.assert_close(w, normalize(a), **TOL)


def test_moneta_mlp_step_is_the_hand_derived_gradient():
    """One token, 2-layer residual MLP with tanh, p = 3, q = 4: W_0 = A_0 / (||A_0||_4^2 + eps)
    per matrix, r = W_0(k) - v, dl/dr = sign(r) |r|^2 (l_p = 1/3 sum |r|^3), g_2 = dl/dr
    tanh(h)^T, g_1 = ((W_2^T dl/dr) * (1 - tanh(h)^2)) k^T with h = W_1 k, A_1 = alpha A_0 -
    eta g, and the read y = W_1(q) with W_1 = A_1 normalised."""
    c = draw(12, steps=1, d=3, hidden=5)
    eta, alpha, _, _ = c["gates"]
    k, v, q = (c[n][:, :, 0] for n in "kvq")
    eps = 1e-6
    normalize = lambda a: a / (a.abs().pow(4).sum((-2, -1), keepdim=True) ** 0.5 + eps)
    a1, a2 = (w.expand(2, *w.shape) for w in c["weights"])
    w1, w2 = normalize(a1), normalize(a2)
    h = matvec(w1, k)
    r = k + matvec(w2, torch.tanh(h)) - v
    dr = torch.sign(r) * r.abs() ** 2
    g2 = outer(dr, torch.tanh(h))
    g1 = outer(torch.einsum("bhoi,bho->bhi", w2, dr) * (1 - torch.tanh(h) ** 2), k)
    e, al = eta[:, :, 0, None, None], alpha[:, :, 0, None, None]
    a1_new, a2_new = al * a1 - e * g1, al * a2 - e * g2
    y, (o1, o2), (d1, d2) = pl.moneta_loop(c["k"], c["v"], c["q"], eta, alpha, c["weights"], 1,
                                           eps=eps, activation=torch.tanh)
    torch.testing.assert_close(d1, a1_new, **TOL)
    torch.testing.assert_close(d2, a2_new, **TOL)
    torch.testing.assert_close(o2, normalize(a2_new), **TOL)
    n1, n2 = normalize(a1_new), normalize(a2_new)
    torch.testing.assert_close(y[:, :, 0], q + matvec(n2, torch.tanh(matvec(n1, q))), **TOL)


def test_memora_mlp_step_is_the_hand_derived_gradient():
    """One token, 2-layer residual MLP with tanh, c = 1: r = W_0(k) - v, g_2 = r tanh(h)^T,
    g_1 = ((W_2^T r) * (1 - tanh(h)^2)) k^T, W_1 = softmax(alpha log W_0 - eta g) row-wise."""
    c = draw(13, steps=1, d=3, hidden=5)
    eta, alpha, _, _ = c["gates"]
    k, v, q = (c[n][:, :, 0] for n in "kvq")
    w0 = _simplex_weights(13, d=3, hidden=5)
    w1, w2 = (w.expand(2, *w.shape) for w in w0)
    h = matvec(w1, k)
    r = k + matvec(w2, torch.tanh(h)) - v
    g2 = outer(r, torch.tanh(h))
    g1 = outer(torch.einsum("bhoi,bho->bhi", w2, r) * (1 - torch.tanh(h) ** 2), k)
    e, al = eta[:, :, 0, None, None], alpha[:, :, 0, None, None]
    n1, n2 = (torch.softmax(al * torch.log(w) - e * g, dim=-1) for w, g in ((w1, g1), (w2, g2)))
    y, (o1, o2), _ = pl.memora_loop(c["k"], c["v"], c["q"], eta, alpha, w0, 1,
                                    activation=torch.tanh)
    torch.testing.assert_close(o1, n1, **TOL)
    torch.testing.assert_close(o2, n2, **TOL)
    torch.testing.assert_close(y[:, :, 0], q + matvec(n2, torch.tanh(matvec(n1, q))), **TOL)


def test_moneta_normalisation_is_scale_free_at_q2():
    """q = 2 and eps = 0: ||A||^0 = 1, so W = A, and with p = 2 (l_p = l2) Moneta is l2 descent
    with retention alpha on the MLP: Yaad with an infinite threshold (two oracles agree)."""
    c = draw(11)
    eta, alpha, _, _ = c["gates"]
    y, w, _ = pl.moneta_loop(c["k"], c["v"], c["q"], eta, alpha, c["weights"], 3, bias_p=2,
                             retention_q=2, eps=0.0)
    y2, w2, _ = pl.yaad_loop(c["k"], c["v"], c["q"], eta, alpha, torch.full_like(eta, 1e9),
                             c["weights"], 3)
    torch.testing.assert_close(y, y2, **TOL)


@pytest.mark.parametrize("read", READS)
def test_yaad_linear_memory_by_hand_takes_both_branches(read):
    """Matrix memory, chunk 3: W <- alpha W - eta r k^T where ||r|| <= delta, else
    W <- alpha W - eta delta sign(r) k^T, r at the chunk-start W. delta is drawn around the
    typical ||r|| so that both branches occur."""
    c = draw(12, layers=1)
    eta, alpha, _, _ = c["gates"]
    delta = 2 * c["gates"][2]                                             # (0, 2), ||r|| ~ 1-2
    w = c["weights"][0].expand(2, *c["weights"][0].shape).clone()
    ys, branches = [], set()
    for t in range(7):
        if t % 3 == 0:
            w_start = w
        r = matvec(w_start, c["k"][:, :, t]) - c["v"][:, :, t]
        small = r.norm(dim=-1, keepdim=True) <= delta[:, :, t, None]
        branches |= set(small.flatten().tolist())
        direction = torch.where(small, r, delta[:, :, t, None] * torch.sign(r))
        w = alpha[:, :, t, None, None] * w - eta[:, :, t, None, None] * outer(direction,
                                                                            c["k"][:, :, t])
        ys.append(matvec(w if read == "own_write" else w_start, c["q"][:, :, t]))
    assert branches == {True, False}
    y, (w_out,), _ = pl.yaad_loop(c["k"], c["v"], c["q"], eta, alpha, delta, c["weights"], 3,
                                  residual=False, read=read)
    torch.testing.assert_close(y, torch.stack(ys, 2), **TOL)
    torch.testing.assert_close(w_out, w, **TOL)


def test_yaad_with_an_infinite_threshold_is_titans_without_momentum():
    """delta -> inf: always the l2 branch, W_t = alpha W_{t-1} - eta grad l2: Titans with
    theta = eta, momentum decay eta_Titans = 0 and forgetting 1 - alpha (two oracles agree)."""
    c = draw(13)
    eta, alpha, _, _ = c["gates"]
    y, w, _ = pl.yaad_loop(c["k"], c["v"], c["q"], eta, alpha, torch.full_like(eta, 1e9),
                           c["weights"], 3)
    y2, w2, _ = pl.titans_loop(c["k"], c["v"], c["q"], eta, torch.zeros_like(eta), 1 - alpha,
                               c["weights"], 3)
    torch.testing.assert_close(y, y2, **TOL)
    for a, b in zip(w, w2):
        torch.testing.assert_close(a, b, **TOL)


def _simplex_weights(seed, heads=3, d=4, hidden=16, c=1.0):
    g = torch.Generator().manual_seed(seed)
    return [c * torch.softmax(torch.randn(heads, o, i, generator=g, dtype=DT), dim=-1)
            for i, o in ((d, hidden), (hidden, d))]


@pytest.mark.parametrize("read", READS)
def test_memora_linear_memory_by_hand(read):
    """Matrix memory, chunk 3, c = 2: W_t = c softmax(alpha log W_{t-1} - eta (W_{t'} k - v) k^T)
    row-wise."""
    c = draw(14, layers=1)
    eta, alpha, _, _ = c["gates"]
    w0 = [2.0 * torch.softmax(c["weights"][0], dim=-1)]
    w = w0[0].expand(2, *w0[0].shape).clone()
    ys = []
    for t in range(7):
        if t % 3 == 0:
            w_start = w
        g = outer(matvec(w_start, c["k"][:, :, t]) - c["v"][:, :, t], c["k"][:, :, t])
        w = 2.0 * torch.softmax(alpha[:, :, t, None, None] * torch.log(w)
                                - eta[:, :, t, None, None] * g, dim=-1)
        ys.append(matvec(w if read == "own_write" else w_start, c["q"][:, :, t]))
    y, (w_out,), _ = pl.memora_loop(c["k"], c["v"], c["q"], eta, alpha, w0, 3, c=2.0,
                                    residual=False, read=read)
    torch.testing.assert_close(y, torch.stack(ys, 2), **TOL)
    torch.testing.assert_close(w_out, w, **TOL)


@pytest.mark.parametrize("simplex", ["row", "matrix"])
def test_memora_stays_on_the_simplex(simplex):
    c = draw(15)
    eta, alpha, _, _ = c["gates"]
    w0 = _simplex_weights(15, c=1.5)
    if simplex == "matrix":
        w0 = [1.5 * w / w.sum((-2, -1), keepdim=True) for w in w0]
    _, w, _ = pl.memora_loop(c["k"], c["v"], c["q"], 4 * eta, alpha, w0, 3, c=1.5, simplex=simplex)
    for wi, w0i in zip(w, pl.expand(w0, 2)):
        assert (wi > 0).all()
        sums = wi.sum(-1) if simplex == "row" else wi.sum((-2, -1))
        torch.testing.assert_close(sums, torch.full_like(sums, 1.5), **TOL)
        assert (wi - w0i).abs().max() > 1e-3


def test_memora_eta_zero_alpha_one_keeps_the_initial_memory():
    """c softmax(log W_0) = W_0 when W_0's rows sum to c."""
    c = draw(16)
    w0 = _simplex_weights(16, c=1.5)
    ones = torch.ones_like(c["gates"][0])
    _, w, _ = pl.memora_loop(c["k"], c["v"], c["q"], 0 * ones, ones, w0, 3, c=1.5)
    for wi, w0i in zip(w, pl.expand(w0, 2)):
        torch.testing.assert_close(wi, w0i, **TOL)


def test_memora_equals_the_logit_form_of_the_spec():
    """memora.nl keeps logits L, L_t = alpha L_{t-1} - eta g_t, W = c softmax(L): the same W_t
    as the literal KL form (softmax ignores the row constant of log W = L - logsumexp(L))."""
    c = draw(17)
    eta, alpha, _, _ = c["gates"]
    logits0 = [torch.log(w) for w in _simplex_weights(17)]
    y, w, _ = pl.memora_loop(c["k"], c["v"], c["q"], eta, alpha,
                             [torch.softmax(lg, -1) for lg in logits0], 3)
    logits, ys = pl.expand(logits0, 2), []
    for t in range(7):
        if t % 3 == 0:
            start = [torch.softmax(lg, -1) for lg in logits]
        g = pl.inner_grad(lambda ws: pl.l2(pl.mlp(ws, c["k"][:, :, t]), c["v"][:, :, t]).sum(),
                          start, False)
        logits = [alpha[:, :, t, None, None] * lg - eta[:, :, t, None, None] * gi
                  for lg, gi in zip(logits, g)]
        ys.append(pl.mlp([torch.softmax(lg, -1) for lg in logits], c["q"][:, :, t]))
    torch.testing.assert_close(y, torch.stack(ys, 2), **TOL)


# -- Atlas ---------------------------------------------------------------------------------------------

def test_newton_schulz_is_the_quintic_on_the_singular_values():
    """NS(X) = U f(Sigma / ||X||_F) V^T with f the scalar quintic iterated 5 times: the matrix
    iteration acts on singular values only. Tall and wide matrices."""
    g = torch.Generator().manual_seed(20)
    a, b, c = pl.MUON_COEFFICIENTS
    for shape in ((2, 5, 3), (2, 3, 5)):
        x = torch.randn(*shape, generator=g, dtype=DT)
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        s = s / torch.linalg.matrix_norm(x)[:, None]
        for _ in range(5):
            s = a * s + b * s ** 3 + c * s ** 5
        torch.testing.assert_close(pl.newton_schulz(x), u @ torch.diag_embed(s) @ vh, **TOL)
        assert s.min() > 0.6 and s.max() < 1.25                            # roughly orthogonal


def atlas_linear_by_hand(k, v, q, eta, theta, alpha, gamma, w0, chunk, window):
    """Atlas' Omega rule with Muon (Atlas eqs. 9, 32-33) for the matrix memory M(u) = W u: the
    window's gradients at the chunk-start matrix, momentum, then W <- alpha W - eta NS5(S)."""
    def step(t, w_start, w, s):
        g = sum(gamma[:, :, i, None, None] * outer(matvec(w_start, k[:, :, i]) - v[:, :, i],
                                                   k[:, :, i])
                for i in range(max(0, t - window + 1), t + 1))
        s = theta[:, :, t, None, None] * s + g
        return alpha[:, :, t, None, None] * w - eta[:, :, t, None, None] * pl.newton_schulz(s), s
    return matrix_memory_by_hand(k, q, w0, chunk, step)


@pytest.mark.parametrize("window", [pytest.param(1, id="window1"), pytest.param(2, id="window2"),
                                    pytest.param(5, id="window5-crosses-chunks")])
def test_atlas_linear_memory_by_hand(window):
    """Matrix memory, chunk 3, T = 7: S_t = theta S + sum_{window} gamma_i (W_{t'} k_i - v_i) k_i^T,
    W_t = alpha W - eta NS5(S_t)."""
    c = draw(21, layers=1)
    eta, theta, alpha, gamma = c["gates"]
    y, (w,), (s,) = pl.atlas_loop(c["k"], c["v"], c["q"], eta, theta, alpha, gamma, c["weights"],
                                  3, window=window, residual=False)
    y_hand, w_hand, s_hand = atlas_linear_by_hand(c["k"], c["v"], c["q"], eta, theta, alpha, gamma,
                                                  c["weights"][0], 3, window)
    torch.testing.assert_close(y, y_hand, **TOL)
    torch.testing.assert_close(w, w_hand, **TOL)
    torch.testing.assert_close(s, s_hand, **TOL)


def test_atlas_window_beyond_the_prefix_is_the_whole_prefix():
    c = draw(22)
    gates = c["gates"]
    run = lambda window: pl.atlas_loop(c["k"], c["v"], c["q"], *gates, c["weights"], 3,
                                       window=window)[0]
    torch.testing.assert_close(run(7), run(50), rtol=0, atol=0)
    assert (run(2) - run(7)).abs().max() > 1e-6


def test_atlas_gamma_masks_the_window():
    """gamma_i weighs token i's term wherever the window holds it. With gamma = 0 on even tokens
    (chunk 1): at t = 0, 1 windows 1 and 2 hold the same nonzero terms, so they agree; at t = 2
    window 1 holds only the zero-weighted token 2 while window 2 also holds token 1, so they
    differ from there on."""
    c = draw(23)
    eta, theta, alpha, _ = c["gates"]
    zero_even = torch.ones_like(eta)
    zero_even[:, :, 0::2] = 0
    y1 = pl.atlas_loop(c["k"], c["v"], c["q"], eta, theta, alpha, zero_even, c["weights"], 1,
                       window=1)[0]
    y2 = pl.atlas_loop(c["k"], c["v"], c["q"], eta, theta, alpha, zero_even, c["weights"], 1,
                       window=2)[0]
    torch.testing.assert_close(y1[:, :, :2], y2[:, :, :2], **TOL)        # t = 0, 1 agree
    assert (y1[:, :, 2:] - y2[:, :, 2:]).abs().max() > 1e-6


def test_polynomial_features_kernel():
    """<phi(x), phi(y)> = sum_i a_i^2 (x . y)^i for the tensor-power features."""
    g = torch.Generator().manual_seed(24)
    x, y = torch.randn(2, 3, 4, generator=g, dtype=DT)
    fx, fy = pl.polynomial_features(x, 3), pl.polynomial_features(y, 3)
    assert fx.shape == (3, 1 + 4 + 16 + 64)
    dot = (x * y).sum(-1)
    expected = sum((1 / math.factorial(i)) ** 2 * dot ** i for i in range(4))
    torch.testing.assert_close((fx * fy).sum(-1), expected, **TOL)


def test_atlas_with_polynomial_keys_runs_the_matrix_memory_on_features():
    """phi applies to keys and queries: a [d_v, d_phi] matrix memory, degree 2 (1 + 4 + 16)."""
    c = draw(25, layers=1)
    phi = lambda u: pl.polynomial_features(u, 2)
    g = torch.Generator().manual_seed(25)
    w0 = [torch.randn(3, 4, 21, generator=g, dtype=DT) / math.sqrt(21)]
    y, (w,), _ = pl.atlas_loop(c["k"], c["v"], c["q"], *c["gates"], w0, 3, window=2,
                               feature_map=phi, residual=False)
    y_hand, w_hand, _ = atlas_linear_by_hand(phi(c["k"]), c["v"], phi(c["q"]), *c["gates"], w0[0],
                                             3, 2)
    torch.testing.assert_close(y, y_hand, **TOL)
    torch.testing.assert_close(w, w_hand, **TOL)
