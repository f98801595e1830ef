"""The task driver (nldsl/module/task.py): levels that learn from the outer task loss, NL eq. 71.

The hand-derived case: two CMS levels with matrix states A (every p_a tokens) and B (every p_b),
y_t = B A x_t, a linear head H and the squared loss L_t = 1/2 ||H y_t - z_t||^2. With
r_t = H^T (H y_t - z_t) = dL_t/dy_t,

    dL_t/dB = r_t (A x_t)^T,        dL_t/dA = B^T r_t x_t^T,

and eq. 71 writes A <- A - lr_a sum_t dL_t/dA(A_i, B_j) at t = 0 mod p_a (each token's gradient
at the states last written), likewise B; `expected_stream` computes exactly that, token by
token, in plain torch (float64), differentiably, so the outer gradient through the writes is
checked too.
"""
from __future__ import annotations

import pytest
import torch

import nldsl
from nldsl.errors import NLDSLCompileError
from nldsl.module.task_window import detach_state

SPEC = """module two_cms(dim: int >= 1, p_a = 4 >= 1, p_b = 2 >= 1, lr_a = 0.1 >= 0,
                    lr_b = 0.1 >= 0) {
  level a every p_a tokens backprop partial PARTIAL {
    state A : [dim, dim] init learned
    minimize task by gd(lr = lr_a)
    read h = A(x)
  }
  level b every p_b tokens backprop partial PARTIAL {
    state B : [dim, dim] init learned
    minimize task by gd(lr = lr_b)
    read y = B(h)
  }
  out = y
}
"""
DIM, OUT = 3, 2
# float64 sums of a few dozen products of O(1) numbers
TOL = 1e-12


def two_cms(partial="flush", schedule="chunked", **hparams):
    torch.manual_seed(0)
    m = nldsl.compile(SPEC.replace("PARTIAL", partial), schedule=schedule, dim=DIM,
                      **hparams).double()
    with torch.no_grad():
        m.A_init.copy_(torch.eye(DIM) + 0.3 * torch.randn(DIM, DIM))
        m.B_init.copy_(torch.eye(DIM) + 0.3 * torch.randn(DIM, DIM))
    return m


def head():
    return torch.randn(OUT, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def squared(H):
    return lambda y, z: 0.5 * ((y @ H.T - z) ** 2).sum()


def data(batch, steps, seed=2):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, steps, DIM, dtype=torch.float64, generator=g),
            torch.randn(batch, steps, OUT, dtype=torch.float64, generator=g))


def expected_stream(A0, B0, H, x, z, p_a, p_b, lr_a, lr_b, partial, first_order=False):
    """Eq. 71 token by token, per sequence: outputs [B, T, dim], final A and B. `first_order`:
    each write's step is a constant (the outer gradient passes the write as the identity)."""
    step = (lambda g: g.detach()) if first_order else (lambda g: g)
    A, B = A0.expand(x.shape[0], DIM, DIM), B0.expand(x.shape[0], DIM, DIM)
    pend_a, pend_b, ys = 0, 0, []
    for t in range(1, x.shape[1] + 1):
        xt, zt = x[:, t - 1, :, None], z[:, t - 1, :, None]              # [B, d, 1]
        h = A @ xt
        y = B @ h                                                         # [B, d, 1]
        r = H.T @ (H @ y - zt)                                            # dL_t/dy_t
        pend_b = pend_b - lr_b * step(r @ h.mT)                           # dL_t/dB
        pend_a = pend_a - lr_a * step(B.mT @ r @ xt.mT)                   # dL_t/dA
        ys.append(y[..., 0])
        if t % p_a == 0:
            A, pend_a = A + pend_a, 0
        if t % p_b == 0:
            B, pend_b = B + pend_b, 0
    if partial == "flush":
        A, B = A + pend_a, B + pend_b
    return torch.stack(ys, 1), A, B


CASES = {
    "periods-4-2-T7": dict(p_a=4, p_b=2, steps=7, partial="flush"),
    "periods-1-4-T9": dict(p_a=1, p_b=4, steps=9, partial="flush"),
    "periods-4-4-drop": dict(p_a=4, p_b=4, steps=10, partial="drop"),
    "periods-6-3-drop": dict(p_a=6, p_b=3, steps=11, partial="drop"),
    "periods-32-4-T70": dict(p_a=32, p_b=4, steps=70, partial="flush"),
}


@pytest.mark.parametrize("through_writes", [True, False], ids=["second-order", "first-order"])
@pytest.mark.parametrize("schedule", ["reference", "chunked"])
@pytest.mark.parametrize("case", list(CASES))
def test_writes_are_eq_71(case, schedule, through_writes):
    """Outputs and final states are the hand-derived eq. 71 stream; so are the outer
    gradients to the initial states and the head, through the writes (`backprop`) or, with
    through_writes=False, with every write's step a constant."""
    c = CASES[case]
    m = two_cms(c["partial"], schedule, p_a=c["p_a"], p_b=c["p_b"], lr_a=0.05, lr_b=0.08)
    H = head().requires_grad_(True)
    x, z = data(2, c["steps"])
    y, state = nldsl.stream(m, x, z, loss=squared(H), through_writes=through_writes)
    want, A, B = expected_stream(m.A_init, m.B_init, H, x, z, c["p_a"], c["p_b"], 0.05, 0.08,
                                 c["partial"], first_order=not through_writes)
    torch.testing.assert_close(y, want, atol=TOL, rtol=0)
    torch.testing.assert_close(state["a"]["A"], A, atol=TOL, rtol=0)
    torch.testing.assert_close(state["b"]["B"], B, atol=TOL, rtol=0)
    assert state["_stream"]["t"] == c["steps"] and not any(k.endswith(".pending")
                                                           for k in state["a"])
    outer = lambda y, A, B: (y ** 2).sum() + (A ** 3).sum() + B.sum()
    params = [m.A_init, m.B_init, H]
    # first order: nothing the outer loss sees depends on H (it enters through the steps only)
    got = torch.autograd.grad(outer(y, state["a"]["A"], state["b"]["B"]), params,
                              allow_unused=True)
    expected = torch.autograd.grad(outer(want, A, B), params, allow_unused=True)
    assert [g is None for g in got] == [e is None for e in expected] == \
        [False, False, not through_writes]
    for name, g, e in zip(["A_init", "B_init", "H"], got, expected):
        if e is not None:
            torch.testing.assert_close(g, e, atol=1e-10, rtol=0, msg=f"d/d{name}")


def test_truncation_changes_the_outer_gradient():
    """The two outer gradients differ (so the test above tells them apart)."""
    m = two_cms(p_a=4, p_b=2)
    H = head()
    x, z = data(2, 8)
    grads = []
    for through in (True, False):
        y, state = nldsl.stream(m, x, z, loss=squared(H), through_writes=through)
        grads.append(torch.autograd.grad((y ** 2).sum(), [m.A_init])[0])
    assert (grads[0] - grads[1]).abs().max() > 1e-3


def test_without_gradients_the_writes_are_the_same():
    """Inference (torch.no_grad): the same eq. 71 stream, outputs detached."""
    m = two_cms(p_a=4, p_b=2)
    H = head()
    x, z = data(2, 7)
    with torch.no_grad():
        y, state = nldsl.stream(m, x, z, loss=squared(H))
    want, A, B = expected_stream(m.A_init.detach(), m.B_init.detach(), H, x, z, 4, 2, 0.1, 0.1,
                                 "flush")
    assert not y.requires_grad
    with torch.no_grad():                  # A not written yet (3 < p_a): still no autograd leaf
        _, early = nldsl.stream(m, x[:, :3], z[:, :3], loss=squared(H), end=False)
    assert not early["a"]["A"].requires_grad and not early["a"]["A.pending"].requires_grad
    torch.testing.assert_close(y, want, atol=TOL, rtol=0)
    torch.testing.assert_close(state["a"]["A"], A, atol=TOL, rtol=0)


FROZEN = {
    "two_cms": (SPEC.replace("PARTIAL", "flush"), dict(dim=4)),
    "cms": ("cms", dict(dim=4, expansion=2, period_slow=4, period_mid=2, period_fast=1)),
    "cms_independent": ("cms_independent", dict(dim=4, expansion=2)),
    "cms_nested": ("cms_nested", dict(dim=4, expansion=2, period_slow=4, period_mid=2,
                                      period_fast=1)),
    # a memory with `layernorm`, and a context averaged over the period (`period_mean`)
    "layernorm-period_mean": ("""module ln_cms(dim: int >= 1) {
  state Wg : [dim, dim] = normal(0.5)
  level slow every 4 tokens backprop partial flush {
    state theta : mlp(dim -> 2 * dim -> dim, gelu, layernorm, residual) init learned by outer
    key u = period_mean(x @ Wg)
    minimize task by gd(lr = 0.1)
    read y = theta(u)
  }
  out = y
}""", dict(dim=4)),
}


@pytest.mark.parametrize("name", list(FROZEN))
def test_frozen_form_equals_the_reference(name, monkeypatch):
    """Without the driver a task level is frozen: the chunked schedule's FrozenForm (all tokens
    at once) equals the reference's token loop, outputs, states and the gradients of x and
    every parameter (float64, odd T)."""
    from _module_cases import forbid_fallback, randomize
    spec, hparams = FROZEN[name]
    runs = []
    for schedule in ("reference", "chunked"):
        m = randomize(nldsl.compile(spec, schedule=schedule, **hparams).double(), 5)
        if schedule == "chunked":
            assert set(m.fast_paths) == {lv.name for lv in m.program.levels}
            forbid_fallback(monkeypatch)
        x = torch.randn(2, 9, hparams["dim"], dtype=torch.float64,
                        generator=torch.Generator().manual_seed(6)).requires_grad_(True)
        y, state = m(x)
        params = [x] + list(m.parameters())
        runs.append((y, state, torch.autograd.grad((y ** 3).sum(), params)))
    (y_r, s_r, g_r), (y_c, s_c, g_c) = runs
    torch.testing.assert_close(y_c, y_r, atol=TOL, rtol=0)
    assert_states_close([s_c], [s_r], atol=0)
    for g, e in zip(g_c, g_r):
        assert e.abs().max() > 0
        torch.testing.assert_close(g, e, atol=1e-10, rtol=0)


# -- inside a whole network: nldsl.lm, next-token prediction on its logits --------------------

PERIODS = dict(period_slow=8, period_mid=4, period_fast=1)
RATES = dict(lr_slow=0.05, lr_mid=0.05, lr_fast=0.05)
VOCAB = 7


def network(spec="cms", schedule="chunked", **hparams):
    torch.manual_seed(3)
    options = {**PERIODS, **RATES, "expansion": 2, **hparams}
    return nldsl.lm(spec, vocab_size=VOCAB, dim=8, depth=2, schedule=schedule, **options).double()


def tokens(batch=2, steps=13, seed=4):
    stream = torch.randint(0, VOCAB, (batch, steps + 1), generator=torch.Generator().manual_seed(seed))
    return stream[:, :-1], stream[:, 1:]


def states(state):
    """(block, level, entry) -> tensor, every tensor of a network's state (MLP layers apart)."""
    found = {}
    for b, own in enumerate(state):
        for level, entries in own.items():
            for name, value in entries.items():
                for i, v in enumerate(value if isinstance(value, tuple) else (value,)):
                    if isinstance(v, torch.Tensor):
                        found[(b, level, name, i)] = v
    return found


def assert_states_close(got, want, atol):
    got, want = states(got), states(want)
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], atol=atol, rtol=0, msg=str(key))


@pytest.mark.parametrize("spec", ["cms", "cms_independent", "cms_nested"])
def test_online_levels_learn_as_they_read(spec):
    """Streaming a document writes the CMS blocks at their periods: the outputs before the
    first write are the frozen network's, later ones are not, and every block moved."""
    model = network(spec)
    inputs, targets = tokens()
    with torch.no_grad():
        frozen, start = model(inputs)
        online, state = nldsl.stream(model, inputs, targets)
    torch.testing.assert_close(online[:, :1], frozen[:, :1], atol=TOL, rtol=0)
    assert (online[:, 1:] - frozen[:, 1:]).abs().max() > 1e-4
    for b in range(2):
        for level in ("slow", "mid", "fast"):
            for name in state[b][level]:      # cms_nested: the blocks' initial states too
                assert not torch.equal(state[b][level][name][0], start[b][level][name][0]), \
                    (b, level, name)


def test_freeze_switch_is_the_frozen_network():
    """learn=False is the network with its online levels frozen, exactly; with every rate 0
    the online stream computes the same (to the rounding of its segment-wise calls) and
    leaves the states exactly as they were."""
    model = network()
    inputs, targets = tokens()
    with torch.no_grad():
        frozen, start = model(inputs)
        off, off_state = nldsl.stream(model, inputs, targets, learn=False)
        zero = network(lr_slow=0.0, lr_mid=0.0, lr_fast=0.0)
        still, still_state = nldsl.stream(zero, inputs, targets)
    assert torch.equal(off, frozen)
    assert_states_close(off_state, start, atol=0)
    torch.testing.assert_close(still, frozen, atol=TOL, rtol=0)
    for key, value in states(still_state).items():
        if key[1] != "_stream":
            assert torch.equal(value, states(start)[key]), key


@pytest.mark.parametrize("spec", ["cms", "cms_nested"])
@pytest.mark.parametrize("cuts", [[5], [1, 7, 8], [4, 8, 12]], ids=["5", "1-7-8", "on-writes"])
def test_a_cut_stream_is_one_stream(cuts, spec):
    """The pending sums and the token count travel in the state: calls cut anywhere (inside a
    period too) compute what one call computes."""
    model = network(spec, period_fast=2)
    inputs, targets = tokens(steps=15)
    with torch.no_grad():
        whole, whole_state = nldsl.stream(model, inputs, targets)
        parts, state, start = [], None, 0
        for stop in cuts + [inputs.shape[1]]:
            y, state = nldsl.stream(model, inputs[:, start:stop], targets[:, start:stop], state,
                                    end=stop == inputs.shape[1])
            parts.append(y)
            start = stop
    torch.testing.assert_close(torch.cat(parts, 1), whole, atol=TOL, rtol=0)
    assert_states_close(state, whole_state, atol=TOL)


@pytest.mark.parametrize("spec, hparams", [
    pytest.param("cms", {}, id="cms"),
    pytest.param("hope", dict(period_slow=8, period_mid=4, period_fast=2, chunk_memory=4,
                              chunk_projections=3), id="hope"),
])
def test_schedules_agree_under_the_driver(spec, hparams):
    """Inside the module a task level is frozen: the chunked schedule (FrozenForm, all tokens
    of a segment at once; Hope's self-modifying levels in the snapshot form, their chunks cut
    by the driver's segments) equals the reference, outputs, states and outer gradients."""
    inputs, targets = tokens(steps=11)
    results = []
    for schedule in ("reference", "chunked"):
        model = network(spec, schedule=schedule, **hparams)
        y, state = nldsl.stream(model, inputs, targets)
        params = list(model.parameters())
        # Hope's M_v initial weights reach y only through stop-gradient targets: no gradient
        grads = torch.autograd.grad(y.square().sum(), params, allow_unused=True)
        results.append((y, state, [torch.zeros_like(p) if g is None else g
                                   for p, g in zip(params, grads)]))
    (y_r, s_r, g_r), (y_c, s_c, g_c) = results
    torch.testing.assert_close(y_c, y_r, atol=1e-10, rtol=0)
    assert_states_close(s_c, s_r, atol=1e-10)
    for g, e in zip(g_c, g_r):
        torch.testing.assert_close(g, e, atol=1e-9, rtol=0)


def test_hope_learns_online_in_a_network():
    """Hope's CMS chain learns from the task loss while its self-modifying levels run."""
    model = network("hope", period_slow=4, period_mid=2, period_fast=1, chunk_memory=2,
                    chunk_projections=2)
    inputs, targets = tokens(batch=1, steps=5)
    with torch.no_grad():
        frozen, _ = model(inputs)
        online, state = nldsl.stream(model, inputs, targets)
    torch.testing.assert_close(online[:, :1], frozen[:, :1], atol=TOL, rtol=0)
    assert (online[:, 1:] - frozen[:, 1:]).abs().max() > 1e-6
    assert state[0]["_stream"]["t"] == 5


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "outer"])
@pytest.mark.parametrize("spec, hparams", [
    pytest.param("hope", dict(chunk_memory=2, chunk_projections=2), id="hope"),
    pytest.param("hope_attention", {}, id="hope_attention")])
def test_a_cut_hope_network_is_one_stream(spec, hparams, grad):
    """nldsl.lm(spec, depth=2): the second block's memories and convs (Hope) or its attention
    (Hope-Attention) read the first block's CMS output, so the task gradient runs through them;
    a call's end inside a period (tokens 3 and 6, periods 2/4/8) changes no output, state or
    outer gradient."""
    model = network(spec, period_slow=8, period_mid=4, period_fast=2, **hparams)
    inputs, targets = tokens(batch=1, steps=9)
    with torch.set_grad_enabled(grad):
        whole, whole_state = nldsl.stream(model, inputs, targets)
        parts, state, start = [], None, 0
        for stop in (3, 6, 9):
            y, state = nldsl.stream(model, inputs[:, start:stop], targets[:, start:stop], state,
                                    end=stop == 9)
            parts.append(y)
            start = stop
    cut = torch.cat(parts, 1)
    torch.testing.assert_close(cut, whole, atol=1e-10, rtol=0)
    assert_states_close(state, whole_state, atol=1e-10)
    if grad:
        params = list(model.parameters())
        for g, e in zip(torch.autograd.grad(cut.sum(), params, allow_unused=True),
                        torch.autograd.grad(whole.sum(), params, allow_unused=True)):
            if e is not None:
                torch.testing.assert_close(g, e, atol=1e-9, rtol=0)


# -- what the driver refuses -----------------------------------------------------------------

def test_a_module_needs_a_loss():
    with pytest.raises(TypeError, match="pass loss=fn"):
        nldsl.stream(two_cms(), *data(1, 3))


def test_targets_must_match_the_inputs():
    x, z = data(1, 4)
    with pytest.raises(ValueError, match="must agree in batch and length"):
        nldsl.stream(two_cms(), x, z[:, :3], loss=squared(head()))


def test_inference_mode_is_refused_when_learning():
    """inference_mode forbids the autograd the writes need; learn=False runs under it."""
    m, (x, z) = two_cms(), data(1, 3)
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match="run it under torch.no_grad"):
            nldsl.stream(m, x, z, loss=squared(head()))
        y, _ = nldsl.stream(m, x, z, loss=squared(head()), learn=False)
    assert y.shape == x.shape


TASK_BASE = """module m(dim: int >= 1) {
  level a every 2 tokens LEVEL {
    state A : [dim, dim] = eye()
    key k = x
    OBJECTIVE
    read y = A(x)
  }
  out = y
}
"""
REFUSED = {
    "task-by-momentum": ("", "minimize task by momentum(lr = 0.1, beta = 0.9)",
                         "momentum(lr = 0.1, beta = 0.9)", "`minimize task by momentum`"),
    "rate-from-a-context": ("", "minimize task by gd(lr = sigmoid(k))", "sigmoid(k)",
                            "not a hyper-parameter"),
    "chunk": ("chunk 4", "minimize task by gd(lr = 0.1)", "4", "`chunk` on a level"),
    "heads": ("heads 1", "minimize task by gd(lr = 0.1)", "1 {", "`heads` on a level"),
    "another-write": ("", "state C : [dim] = zeros()\n    A: minimize task by gd(lr = 0.1)\n"
                      "    C <- C + k", "C <- C + k", "has another write"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_what_the_driver_cannot_run_is_located(name):
    """A task level the driver cannot run is a located compile error, as `nldsl check`
    reports it (check accepts => compiles)."""
    level, objective, where, message = REFUSED[name]
    text = TASK_BASE.replace("LEVEL", level).replace("OBJECTIVE", objective)
    with pytest.raises(NLDSLCompileError) as info:
        nldsl.compile(text, dim=2)
    rows = text.splitlines()
    line = next(i for i, row in enumerate(rows, 1) if where in row and (name != "chunk" or
                                                                         "chunk" in row))
    col = rows[line - 1].index(where) + 1
    assert f"<string>:{line}:{col}: error:" in str(info.value) and message in str(info.value)


def test_a_task_level_with_a_context_of_its_state_runs_the_reference():
    """A context of a task level's own state has no frozen form (the chunked schedule's
    contexts apply no memory): the module runs the reference, and the driver works the same."""
    text = TASK_BASE.replace("LEVEL", "").replace("key k = x", "key k = A(x)").replace(
        "OBJECTIVE", "minimize task by gd(lr = 0.1)").replace("read y = A(x)", "read y = A(k)")
    m = nldsl.compile(text, dim=DIM)                   # no parameters: float32, as built
    assert m.fast_paths == {}
    x, z = (t.float() for t in data(2, 5))
    with torch.no_grad():
        y, state = nldsl.stream(m, x, z, loss=squared(torch.eye(OUT, DIM)))
        frozen, _ = m(x)
    assert torch.equal(y[:, :2], frozen[:, :2])         # the same token loop before the write
    assert (y[:, 2:] - frozen[:, 2:]).abs().max() > 1e-6


@pytest.mark.parametrize("name", ["cms", "cms_independent", "cms_nested", "hope",
                                  "hope_attention"])
def test_check_and_compile_agree_on_the_task_specs(name):
    """`nldsl check` accepts every stdlib spec that learns from the task loss, and each
    compiles (the refusals below are located errors in both)."""
    from nldsl.cli import main
    assert main(["check", name]) == 0
    nldsl.compile(name, dim=8)


# -- nested CMS (NL eq. 72): a block restarts from an initial state its teacher learns --------

NESTED = """module nested_cms(dim: int >= 1, p_a = 4 >= 1, p_b = 2 >= 1, lr_a = 0.1 >= 0,
                       lr_b = 0.1 >= 0) {
  level a every p_a tokens backprop partial PARTIAL {
    state A : [dim, dim] init learned by outer
    minimize task by gd(lr = lr_a)
    read h = A(x)
  }
  level b every p_b tokens backprop partial PARTIAL {
    state B : [dim, dim] init learned by a
    minimize task by gd(lr = lr_b)
    read y = B(h)
  }
  out = y
}
"""


def nested_cms(partial="flush", schedule="chunked", **hparams):
    torch.manual_seed(0)
    m = nldsl.compile(NESTED.replace("PARTIAL", partial), schedule=schedule, dim=DIM,
                      **hparams).double()
    with torch.no_grad():
        m.A_init.copy_(torch.eye(DIM) + 0.3 * torch.randn(DIM, DIM))
        m.B_init.copy_(torch.eye(DIM) + 0.3 * torch.randn(DIM, DIM))
    return m


def expected_nested(A0, Phi0, H, x, z, p_a, p_b, lr_a, lr_b, partial, first_order=False):
    """Eq. 72 token by token, per sequence: outputs, final A, B and Phi (B's initial state, a
    state of level a). B restarts from Phi at t = 0, p_a, 2 p_a, ...; A and Phi are written
    there by a's rule from the period's summed gradients, A's at A (eq. 71) and Phi's by the
    chain rule through B's writes since the restart. B's write after its period k,
    B_{k+1} = B_k - lr_b sum_t H^T (H B_k h_t - z_t) h_t^T = B_k - lr_b M B_k S_k + c_k with
    M = H^T H and S_k = sum_t h_t h_t^T (A, hence h, fixed within a's period), is linear in B_k,
    so a cotangent U of B_{k+1} is U - lr_b M U S_k at B_k: dL_t/dPhi is dL_t/dB_j = r_t h_t^T
    carried back through the periods before t's. `first_order`: every write's step a constant,
    so the writes pass dL_t/dB_j to Phi unchanged."""
    step = (lambda g: g.detach()) if first_order else (lambda g: g)
    M = H.T @ H
    A, Phi = A0.expand(x.shape[0], DIM, DIM), Phi0.expand(x.shape[0], DIM, DIM)
    B, done, S = Phi, [], 0                 # done: S_k of B's periods since its restart
    pend_a, pend_b, pend_phi, ys = 0, 0, 0, []
    steps = x.shape[1]
    for t in range(1, steps + 1):
        xt, zt = x[:, t - 1, :, None], z[:, t - 1, :, None]              # [B, d, 1]
        h = A @ xt
        y = B @ h                                                         # [B, d, 1]
        r = H.T @ (H @ y - zt)                                            # dL_t/dy_t
        pend_b = pend_b - lr_b * step(r @ h.mT)                           # dL_t/dB
        pend_a = pend_a - lr_a * step(B.mT @ r @ xt.mT)                   # dL_t/dA
        U = r @ h.mT
        for S_k in reversed(done if not first_order else []):
            U = U - lr_b * M @ U @ S_k
        pend_phi = pend_phi - lr_a * step(U)                              # dL_t/dPhi
        S = S + h @ h.mT
        ys.append(y[..., 0])
        if t % p_b == 0:
            B, pend_b, done, S = B + pend_b, 0, done + [S], 0
        if t % p_a == 0:
            A, Phi, pend_a, pend_phi = A + pend_a, Phi + pend_phi, 0, 0
            B, done = Phi, []                                             # the restart
    if partial == "flush" and steps % p_a:
        A, Phi = A + pend_a, Phi + pend_phi
        B = Phi                             # a flush is a write of a: B restarts
    return torch.stack(ys, 1), A, B, Phi


NESTED_CASES = {
    "periods-4-2-T7": dict(p_a=4, p_b=2, steps=7, partial="flush"),
    "periods-6-2-T13": dict(p_a=6, p_b=2, steps=13, partial="flush"),
    "periods-6-3-T11-drop": dict(p_a=6, p_b=3, steps=11, partial="drop"),
    "periods-3-1-T8": dict(p_a=3, p_b=1, steps=8, partial="flush"),
    "periods-4-4-T9": dict(p_a=4, p_b=4, steps=9, partial="flush"),
}


@pytest.mark.parametrize("through_writes", [True, False], ids=["second-order", "first-order"])
@pytest.mark.parametrize("schedule", ["reference", "chunked"])
@pytest.mark.parametrize("case", list(NESTED_CASES))
def test_nested_writes_are_eq_72(case, schedule, through_writes):
    """Outputs, final states and outer gradients are the hand-derived eq. 72 stream; without
    gradients (inference) the same values, and no state keeps a graph at the end."""
    c = NESTED_CASES[case]
    m = nested_cms(c["partial"], schedule, p_a=c["p_a"], p_b=c["p_b"], lr_a=0.05, lr_b=0.08)
    H = head().requires_grad_(True)
    x, z = data(2, c["steps"])
    y, state = nldsl.stream(m, x, z, loss=squared(H), through_writes=through_writes)
    want, A, B, Phi = expected_nested(m.A_init, m.B_init, H, x, z, c["p_a"], c["p_b"], 0.05,
                                      0.08, c["partial"], first_order=not through_writes)
    torch.testing.assert_close(y, want, atol=TOL, rtol=0)
    got = (state["a"]["A"], state["b"]["B"], state["a"]["B.init"])
    for name, g, e in zip(["A", "B", "B.init"], got, (A, B, Phi)):
        torch.testing.assert_close(g, e, atol=TOL, rtol=0, msg=name)
    outer = lambda y, A, B, Phi: (y ** 2).sum() + (A ** 3).sum() + B.sum() + (Phi ** 2).sum()
    params = [m.A_init, m.B_init, H]
    grads = torch.autograd.grad(outer(y, *got), params, allow_unused=True)
    expected = torch.autograd.grad(outer(want, A, B, Phi), params, allow_unused=True)
    assert [g is None for g in grads] == [e is None for e in expected] == \
        [False, False, not through_writes]
    for name, g, e in zip(["A_init", "B_init", "H"], grads, expected):
        if e is not None:
            torch.testing.assert_close(g, e, atol=1e-10, rtol=0, msg=f"d/d{name}")
    with torch.no_grad():
        y0, state0 = nldsl.stream(m, x, z, loss=squared(H), through_writes=through_writes)
    torch.testing.assert_close(y0, want, atol=TOL, rtol=0)
    for name, e in zip(["A", "B.init"], (A, Phi)):
        torch.testing.assert_close(state0["a"][name], e, atol=TOL, rtol=0, msg=name)
    assert not any(v.requires_grad for level in ("a", "b") for v in state0[level].values())


def test_the_initial_state_learns_through_the_writes():
    """The chain rule through B's writes changes Phi's gradient (so the test above tells the
    second-order stream from the first-order one), and B restarts: after a's first write the
    stream differs from the sequential CMS's, where B runs on."""
    m = nested_cms(p_a=4, p_b=2)
    H = head()
    x, z = data(2, 8)
    with torch.no_grad():
        runs = [nldsl.stream(m, x, z, loss=squared(H), through_writes=t) for t in (True, False)]
        plain = two_cms(p_a=4, p_b=2)
        y_plain, _ = nldsl.stream(plain, x, z, loss=squared(H))
    (y, state), (_, first) = runs
    assert (state["a"]["B.init"] - first["a"]["B.init"]).abs().max() > 1e-4
    torch.testing.assert_close(y[:, :4], y_plain[:, :4], atol=TOL, rtol=0)
    assert (y[:, 4:] - y_plain[:, 4:]).abs().max() > 1e-4


def in_calls(m, x, z, cuts, loss):
    """nldsl.stream over x cut into calls at `cuts`, the state carried: (outputs, state)."""
    parts, state, start = [], None, 0
    for stop in cuts + [x.shape[1]]:
        y, state = nldsl.stream(m, x[:, start:stop], z[:, start:stop], state, loss=loss,
                                end=stop == x.shape[1])
        parts.append(y)
        start = stop
    return torch.cat(parts, 1), state


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "outer"])
@pytest.mark.parametrize("cuts", [[5], [1, 3, 8], [6, 12]], ids=["5", "1-3-8", "on-writes"])
def test_a_cut_nested_stream_is_one_stream(cuts, grad):
    """Calls cut anywhere (inside a's period too: the states carry the period's graph to the
    next call) compute what one call does: outputs, states, and the outer gradients."""
    m = nested_cms(p_a=6, p_b=2, lr_a=0.05, lr_b=0.08)
    H = head()
    x, z = data(2, 13)
    with torch.set_grad_enabled(grad):
        whole, whole_state = nldsl.stream(m, x, z, loss=squared(H))
        cut, state = in_calls(m, x, z, cuts, squared(H))
    torch.testing.assert_close(cut, whole, atol=TOL, rtol=0)
    for level, name in (("a", "A"), ("a", "B.init"), ("b", "B")):
        torch.testing.assert_close(state[level][name], whole_state[level][name], atol=TOL,
                                   rtol=0, msg=name)
    if grad:
        params = [m.A_init, m.B_init]
        for g, e in zip(torch.autograd.grad((cut ** 2).sum(), params),
                        torch.autograd.grad((whole ** 2).sum(), params)):
            torch.testing.assert_close(g, e, atol=1e-10, rtol=0)


@pytest.mark.parametrize("cuts", [[1, 1], [2, 2, 4]], ids=["1-1", "2-2-4"])
def test_an_empty_call_passes_a_nested_stream_on(cuts):
    """An empty call (x[:, t:t]) inside the teacher's period: the states pass as they are. The
    FOUND case of tests/test_fuzz_task.py: with mlp states the module's copies replaced the
    nodes the block's graph starts from, so Phi lost its total derivative (and later writes
    their values)."""
    text = NESTED.replace("PARTIAL", "flush").replace("[dim, dim] init", "mlp(dim -> dim, tanh) init")
    torch.manual_seed(0)
    m = nldsl.compile(text, dim=DIM, p_a=6, p_b=1, lr_a=0.05, lr_b=0.08).double()
    H = head()
    x, z = data(2, 5)
    with torch.no_grad():
        whole, whole_state = nldsl.stream(m, x, z, loss=squared(H))
        cut, state = in_calls(m, x, z, cuts, squared(H))
    torch.testing.assert_close(cut, whole, atol=TOL, rtol=0)
    for level, name in (("a", "A"), ("a", "B.init"), ("b", "B")):
        for got, want in zip(state[level][name], whole_state[level][name]):
            torch.testing.assert_close(got, want, atol=TOL, rtol=0, msg=name)


#: Found by fuzzing: a `backprop` token level that reads a task level's read. Its state carries
#: a graph back to theta within a segment, so a token's task gradient includes the path through
#: the memory's writes since the segment start. A call's end inside a segment used to start a
#: new one (a cut differed from one call by about 1e-2); now the segment's nodes and graph carry
#: over to the next call (task.py, "State carried across calls").
DOWNSTREAM_BACKPROP = """module m(dim: int = 3 >= 1) {
  level c every 4 tokens {
    state A : [dim, dim] init learned
    minimize task by gd(lr = 0.05)
    read h = A(x)
  }
  level memory every 1 token backprop {
    state M : [dim, dim] = 0
    minimize -dot(M(x), h) by gd(lr = 0.5)
    read y = M(x)
  }
  out = y + h
}
"""


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "outer"])
@pytest.mark.parametrize("cuts", [[2], [1, 3, 5], [4]], ids=["2", "1-3-5", "on-writes"])
def test_a_cut_inside_a_period_with_a_downstream_backprop_level_is_one_stream(cuts, grad):
    """Outputs, final states and (with gradients on) the outer gradients of a stream cut into
    calls equal one call's, also where the memory's path to A crosses a call's end."""
    torch.manual_seed(0)
    m = nldsl.compile(DOWNSTREAM_BACKPROP).double()
    with torch.no_grad():
        m.A_init.copy_(torch.eye(3) + 0.3 * torch.randn(3, 3))
    H = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x, z = (torch.randn(2, 7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
            for s in (2, 3))
    with torch.set_grad_enabled(grad):
        whole, whole_state = nldsl.stream(m, x, z, loss=squared(H))
        cut, state = in_calls(m, x, z, cuts, squared(H))
    torch.testing.assert_close(cut, whole, atol=TOL, rtol=0)
    for level, name in (("c", "A"), ("memory", "M")):
        torch.testing.assert_close(state[level][name], whole_state[level][name], atol=TOL,
                                   rtol=0, msg=name)
    if grad:
        params = list(m.parameters())
        for g, e in zip(torch.autograd.grad((cut ** 2).sum(), params),
                        torch.autograd.grad((whole ** 2).sum(), params)):
            torch.testing.assert_close(g, e, atol=1e-10, rtol=0)


def test_a_cut_without_the_carried_graph_differs():
    """The path through the memory's writes across the call's end is in G, so the test above
    tells a carried segment from one restarted at the cut: detaching the state between the
    calls (the segment restarted) writes another A."""
    torch.manual_seed(0)
    m = nldsl.compile(DOWNSTREAM_BACKPROP).double()
    with torch.no_grad():
        m.A_init.copy_(torch.eye(3) + 0.3 * torch.randn(3, 3))
    x, z = (torch.randn(2, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
            for s in (2, 3))
    loss = lambda y, t: 0.5 * ((y - t) ** 2).sum()
    with torch.no_grad():
        _, whole = nldsl.stream(m, x, z, loss=loss)
        _, state = nldsl.stream(m, x[:, :2], z[:, :2], loss=loss, end=False)
        _, restarted = nldsl.stream(m, x[:, 2:], z[:, 2:], detach_state(state), loss=loss)
    assert (restarted["c"]["A"] - whole["c"]["A"]).abs().max() > 1e-3


@pytest.mark.parametrize("grad", [False, True], ids=["inference", "outer"])
@pytest.mark.parametrize("memory", ["[dim, dim] = 0", "mlp(dim -> dim, tanh)"],
                         ids=["matrix", "mlp"])
def test_an_empty_call_inside_a_carried_segment_keeps_its_graph(memory, grad):
    """Calls [0, 1), [1, 1), [1, 7): the empty call runs the module on no token, which still
    converts an MLP memory's state (its layers flattened and back); under the caller's no_grad
    that conversion dropped the graph the carried segment holds, and the memory's writes then
    lost their path to A (found by tests/test_fuzz_task.py: the cut stream differed by 5e-3)."""
    torch.manual_seed(0)
    m = nldsl.compile(DOWNSTREAM_BACKPROP.replace("[dim, dim] = 0", memory)).double()
    x, z = (torch.randn(2, 7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
            for s in (2, 3))
    loss = lambda y, t: 0.5 * ((y - t) ** 2).sum()
    with torch.set_grad_enabled(grad):
        whole, whole_state = nldsl.stream(m, x, z, loss=loss)
        cut, state = in_calls(m, x, z, [1, 1], loss)
    torch.testing.assert_close(cut, whole, atol=TOL, rtol=0)
    assert_states_close([state], [whole_state], atol=TOL)


@pytest.mark.parametrize("read", ["A(attention(x, x, x))", "A(window_attention(x, x, x, 2)) + x"],
                         ids=["attention", "window-attention"])
def test_a_frozen_task_level_reads_through_attention(read):
    """A task level whose read applies an attention inline: the chunked schedule's frozen form
    evaluates it over the call (module/chunked.py gave its read evaluator no attention, a
    KeyError `attention inside a windowed expression`; found by tests/test_fuzz_task.py), and
    the stream equals the reference's, in one call and cut at 3 (inside a period)."""
    text = ("module m(dim: int = 3 >= 1) {\n  level a every 2 tokens {\n"
            "    state A : [dim, dim] init learned\n    minimize task by gd(lr = 0.05)\n"
            f"    read h = {read}\n  }}\n  out = h\n}}\n")
    x, z = (torch.randn(2, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
            for s in (2, 3))
    loss = lambda y, t: 0.5 * ((y - t) ** 2).sum()
    runs = []
    for schedule in ("reference", "chunked"):
        torch.manual_seed(0)
        m = nldsl.compile(text, schedule=schedule).double()
        assert schedule == "reference" or set(m.fast_paths) == {"a"}
        with torch.no_grad():
            runs.append((nldsl.stream(m, x, z, loss=loss), in_calls(m, x, z, [3], loss)))
    ((y_r, s_r), _), ((y_c, s_c), (cut, s_cut)) = runs
    for y, state in ((y_c, s_c), (cut, s_cut)):
        torch.testing.assert_close(y, y_r, atol=TOL, rtol=0)
        assert_states_close([state], [s_r], atol=TOL)


NESTED_SPEC = dict(dim=4, expansion=2, lr_slow=0.005, lr_mid=0.005, lr_fast=0.005)


@pytest.mark.parametrize("periods, steps", [((6, 3, 1), 11), ((8, 4, 2), 13)],
                         ids=["6-3-1-T11", "8-4-2-T13"])
def test_cms_nested_schedules_agree_under_the_driver(periods, steps):
    """cms_nested through nldsl.stream: the chunked schedule (FrozenForm) equals the
    reference, outputs, final states and the gradients of x and every parameter (float64,
    odd T, periods that do not divide T)."""
    slow, mid, fast = periods
    H = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    z = torch.randn(2, steps, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    runs = []
    for schedule in ("reference", "chunked"):
        torch.manual_seed(9)
        m = nldsl.compile("cms_nested", schedule=schedule, period_slow=slow, period_mid=mid,
                          period_fast=fast, **NESTED_SPEC).double()
        assert schedule == "reference" or set(m.fast_paths) == {"slow", "mid", "fast"}
        x = torch.randn(2, steps, 4, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(6)).requires_grad_(True)
        y, state = nldsl.stream(m, x, z, loss=lambda y, z: 0.5 * ((y @ H.T - z) ** 2).sum())
        params = [x] + list(m.parameters())
        runs.append((y, state, torch.autograd.grad((y ** 3).sum(), params)))
    (y_r, s_r, g_r), (y_c, s_c, g_c) = runs
    torch.testing.assert_close(y_c, y_r, atol=1e-10, rtol=0)
    assert {n for n in s_r["slow"]} == {"theta_slow", "theta_mid.init"}
    assert_states_close([s_c], [s_r], atol=1e-10)
    for g, e in zip(g_c, g_r):
        assert e.abs().max() > 0
        torch.testing.assert_close(g, e, atol=1e-9, rtol=0)


def test_nested_periods_must_nest():
    """A block restarts at one of its own writes: a teacher's period that is not a multiple
    of the block's is a located error at the `init learned by`."""
    with pytest.raises(NLDSLCompileError) as info:
        nldsl.compile(NESTED.replace("PARTIAL", "flush"), dim=2, p_a=6, p_b=4)
    row = next(i for i, r in enumerate(NESTED.splitlines(), 1) if "init learned by a" in r)
    col = NESTED.splitlines()[row - 1].index("init learned by a") + 1
    assert f"<string>:{row}:{col}: error: B restarts from a state of level 'a' every 6 " \
        "tokens" in str(info.value)


def test_a_nested_init_outside_a_task_level_is_refused(tmp_path, capsys):
    """`init learned by` a token level compiles for a nested CMS only: a memory that learns
    by its own rule (not the task loss) is refused, located, at `nldsl check` as at compile."""
    from nldsl.cli import main
    text = TASK_BASE.replace("LEVEL", "").replace("OBJECTIVE", "minimize task by gd(lr = 0.1)")
    text = text.replace("  out = y", """  level b every 1 token {
    state M : [dim, dim] init learned by a
    minimize l2(M(k2), k2) by gd(lr = 0.1)
    key k2 = y
    read w = M(k2)
  }
  out = w""")
    with pytest.raises(NLDSLCompileError) as info:
        nldsl.compile(text, dim=2)
    row = next(i for i, r in enumerate(text.splitlines(), 1) if "init learned by a" in r)
    col = text.splitlines()[row - 1].index("init learned by a") + 1
    message = f"{row}:{col}: error: M: an initial state learned by a token level ('a') is " \
        "compiled for a nested CMS only"
    assert f"<string>:{message}" in str(info.value)
    path = tmp_path / "m.nl"
    path.write_text(text)
    assert main(["check", str(path)]) == 1 and f"m.nl:{message}" in capsys.readouterr().err
