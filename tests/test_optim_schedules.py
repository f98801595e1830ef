"""The fused schedule (generated code) computes what the reference interpreter computes.

Newton-Schulz plans (muon, m3) run it once per group of equal-shape matrices in the fused
schedule, matrix by matrix in the reference; batched and per-matrix products round differently.
So their trajectories are compared in float64, with specs whose Newton-Schulz also runs in
float64 (same code, only the `precision` argument changed), and the stdlib specs (bfloat16 for
Muon, float32 for M3) step by step: the fused step must be as close to the float64 step as the
reference step is.
"""
import copy
import re

import pytest
import torch

import nldsl
from nldsl.library import resolve
from nldsl.optim import kernels
from nldsl.testing import newton_schulz_error_bound

CASES = {
    "sgd nesterov": ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True)),
    "momentum": ("momentum", {}),
    "adam (fused kernel)": ("adam", dict(lr=1e-2, weight_decay=0.1)),
    "adam amsgrad (foreach)": ("adam", dict(amsgrad=True)),
    "adamw": ("adamw", {}),
    "adagrad": ("adagrad", dict(lr_decay=0.01)),
    "rmsprop centered": ("rmsprop", dict(centered=True, momentum=0.5)),
    "dgd": ("dgd", {}),
    "delta_momentum": ("delta_momentum", {}),
    "dmgd": ("dmgd", {}),
}
NEWTON_SCHULZ_CASES = {
    "muon": ("muon", dict(lr=2e-2)),
    "muon no nesterov, match_rms_adamw": ("muon", dict(nesterov=False, adjust_lr_fn="match_rms_adamw")),
    "m3": ("m3", dict(f=3)),
    "m3 ema": ("m3", dict(form="ema", f=3)),
}


def float64_spec(name: str) -> str:
    """The stdlib spec with every Newton-Schulz computed in float64."""
    text, _ = resolve(name)
    changed = re.sub(r'newton_schulz\((\w+), ns_steps\)',
                     r'newton_schulz(\1, ns_steps, "quintic", 1e-7, "float64")', text)
    changed = changed.replace('"bfloat16")', '"float64")')
    assert changed != text
    return changed


def network(matrices_only: bool, dtype=torch.float32) -> torch.nn.Module:
    """An MLP; with matrices only (Muon, M3), two hidden 7x7 layers share a shape, so the fused
    schedule orthogonalises them as one group, beside a tall 7x5 and a wide 2x7 matrix."""
    torch.manual_seed(0)
    if matrices_only:
        layers = [torch.nn.Linear(5, 7, bias=False), torch.nn.Tanh(), torch.nn.Linear(7, 7, bias=False),
                  torch.nn.Tanh(), torch.nn.Linear(7, 7, bias=False), torch.nn.Tanh(),
                  torch.nn.Linear(7, 2, bias=False)]
    else:
        layers = [torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2)]
    return torch.nn.Sequential(*layers).to(dtype)


def data(dtype=torch.float32):
    torch.manual_seed(1)
    return torch.randn(16, 5, dtype=dtype), torch.randn(16, 2, dtype=dtype)


def run(spec, hparams, schedule, matrices_only=False, dtype=torch.float32, steps=12):
    model = network(matrices_only, dtype)
    opt = nldsl.optimizer(spec, model.parameters(), schedule=schedule, **hparams)
    x, y = data(dtype)
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("name, hparams", CASES.values(), ids=CASES.keys())
def test_fused_equals_reference(name, hparams):
    """Elementwise plans: foreach code runs the interpreter's operations tensor by tensor (equal
    bit for bit, measured), the fused Adam kernel rounds its own way (1 ulp, measured). The
    tolerance is a few float32 roundings (2^-24 relative) per entry per step over 12 steps,
    rtol 1e-5, with atol 1e-6 for entries near 0."""
    reference, _ = run(name, hparams, "reference")
    fused, _ = run(name, hparams, "fused")
    for a, b in zip(reference.parameters(), fused.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, hparams", NEWTON_SCHULZ_CASES.values(), ids=NEWTON_SCHULZ_CASES.keys())
def test_fused_equals_reference_in_float64(name, hparams):
    """Products summed in another order differ by a few float64 roundings (~1e-16) per step;
    the dynamics amplify them (M3's EMA form divides by sqrt(V) with 1 - beta2 = 1e-3: 8e-11
    after 12 steps, measured), far below any difference an error in the code would make."""
    spec = nldsl.load(float64_spec(name))
    reference, _ = run(spec, hparams, "reference", True, torch.float64)
    fused, opt = run(spec, hparams, "fused", True, torch.float64)
    assert {compiled.mode for _, compiled in opt._plans.values()} == {"foreach by shape"}
    for a, b in zip(reference.parameters(), fused.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


def one_step(spec, hparams, schedule, model, state, grads):
    """[(W, W's change, W's state after the step)] in one step of `schedule` from the given
    parameters, state and gradients."""
    model = copy.deepcopy(model)
    for p, g in zip(model.parameters(), grads):
        p.grad = g.to(p.dtype)
    opt = nldsl.optimizer(spec, model.parameters(), schedule=schedule, **hparams)
    opt.load_state_dict(copy.deepcopy(state))
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    return [(b, p.detach() - b, opt.state[p]) for p, b in zip(model.parameters(), before)]


def m3_step_error(w, change, want, state, hparams) -> tuple[float, float]:
    """(error, bound) of an M3 step. Its change is D (O1 + alpha O2), D = lr / (sqrt(V) + eps)
    elementwise: the runs compute D alike (elementwise float32 ops) and differ in how
    O1 = NS(M1) and, on a slow step, O2 = NS(M2) are rounded (batched or per matrix, float32),
    each within `newton_schulz_error_bound` of the exact iteration (an O2 held in the state is
    the same in every run). So, divided by D, the error is at most (1 + alpha) times that
    bound, plus the float32 roundings of W and of the change (2^-22 (|W| + |change|), over D)."""
    lr, alpha, eps = hparams.get("lr", 1e-3), hparams.get("alpha", 1.0), hparams.get("eps", 1e-8)
    weight = lr / (state["V"].double().sqrt() + eps)
    ns = newton_schulz_error_bound(tuple(w.shape), hparams.get("ns_steps", 5), "quintic", "float32")
    rounding = (2 ** -22 * (w.abs() + want.abs()) / weight).norm().item()
    return ((change - want) / weight).norm().item(), (1 + alpha) * ns + rounding


@pytest.mark.parametrize("name, hparams", NEWTON_SCHULZ_CASES.values(), ids=NEWTON_SCHULZ_CASES.keys())
def test_fused_step_is_as_accurate_as_the_reference_step(name, hparams):
    """Along a reference trajectory, one step of each schedule from the same parameters, state
    and gradients, against the step whose Newton-Schulz runs in float64 (everything else equal).
    Every difference is then Newton-Schulz rounding, plus float32 roundings (2^-24 relative,
    two per entry: W's new value and the change taken from it) of W and of its change.

    M3 (float32 Newton-Schulz): both schedules' steps are within `m3_step_error`'s bound, derived from
    the rounding bound of the iteration (nldsl.testing.newton_schulz_error_bound). Muon
    (bfloat16) has no informative bound (tests/test_optim_kernels.py), so accuracy is compared:
    the fused step is no farther from the float64 step than the reference step (torch's
    per-matrix arithmetic) is, up to a factor 2 and one bfloat16 rounding (2^-8) of the change.
    """
    float64 = nldsl.load(float64_spec(name))
    model = network(True)
    opt = nldsl.optimizer(name, model.parameters(), schedule="reference", **hparams)
    x, y = data()
    for _ in range(7):
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        state = opt.state_dict()
        reference = one_step(name, hparams, "reference", model, state, grads)
        fused = one_step(name, hparams, "fused", model, state, grads)
        exact = one_step(float64, hparams, "reference", model, state, grads)
        for (w, ref, ref_state), (_, fused_change, _), (_, want, _) in zip(reference, fused, exact):
            slack = 2 ** -22 * (w.norm() + want.norm())
            if name == "m3":
                for change in (fused_change, ref):
                    error, bound = m3_step_error(w, change, want, ref_state, hparams)
                    assert error <= bound
            else:
                slack = slack + 2 ** -8 * want.norm()
                assert (fused_change - want).norm() <= 2 * (ref - want).norm() + slack
        opt.step()


def test_equal_shapes_are_orthogonalised_together(monkeypatch):
    groups = []
    original = kernels.newton_schulz_group

    def spy(xs, *args):
        groups.append(sorted(tuple(x.shape) for x in xs))
        return original(xs, *args)

    monkeypatch.setattr(kernels, "newton_schulz_group", spy)
    run("muon", {}, "fused", matrices_only=True, steps=1)
    assert sorted(groups) == [[(2, 7)], [(7, 5)], [(7, 7), (7, 7)]]


# Contexts are computed before any write of the step (docs/language.md, ordering within a unit),
# even when they are a state, a view of W, or use a read of an every-step level: both schedules.
SNAPSHOT_SPEC = """
optimizer snapshot(lr = 0.1 > 0) {
  level weights every 1 step {
    W <- W - lr * (m - transpose(m_t)) - lr * (W - w_old) - lr * 0.001 * o_now
  }
  level moments every 1 step {
    key g = grad(W)
    let w_old = W
    let m_t = transpose(m)
    let o_old = 2 * o_now
    state m like W = 0
    state o like W = 0
    m: minimize -dot(m, g) by ema(0.9)
    o <- o_old + g
    read o_now = o
  }
}
"""


def snapshot_by_hand(w, grads, lr=0.1):
    """m_t = 0.9 m + 0.1 g_t; o_t = 2 o_{t-1} + g_t; W_t = W_{t-1} - lr (m_t - m_{t-1}) - lr o_t / 1000:
    `m_t` (a view of m), `w_old` (W itself) and `o_old` (a read) keep their values from before
    the step's writes."""
    m, o = torch.zeros_like(w), torch.zeros_like(w)
    for g in grads:
        m_new = 0.9 * m + 0.1 * g
        o = 2 * o + g
        w = w - lr * (m_new - m) - lr * 0.001 * o
        m = m_new
    return w, o


@pytest.mark.parametrize("schedule", ["reference", "fused"])
def test_contexts_see_the_states_before_the_step_writes(schedule):
    torch.manual_seed(3)
    w0, grads = torch.randn(5, 3), [torch.randn(5, 3) for _ in range(4)]
    w = torch.nn.Parameter(w0.clone())
    opt = nldsl.optimizer(SNAPSHOT_SPEC, [w], schedule=schedule)
    for g in grads:
        w.grad = g
        opt.step()
    expected_w, expected_o = snapshot_by_hand(w0, grads)
    torch.testing.assert_close(w.detach(), expected_w)
    torch.testing.assert_close(opt.state[w]["o"], expected_o)
