"""`by solve` (nldsl/optim/solve.py): the solved state is the exact minimiser of its windowed
ridge objective; both schedules agree bit for bit; state_dict resumes exactly; Adam's closed form
(examples/adam_closed_form.nl) is the paper's explicit eq. 105 (examples/adam_paper.nl)."""
import copy
from functools import lru_cache

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.func import grad as func_grad

import nldsl
from nldsl.errors import NLDSLCompileError
from nldsl.optim.plan import lower
from nldsl.spec import load

SPEC = """optimizer ridge(lam = 0.5 >= 0, gamma = 0.7 >= 0) {{
  level weights every 1 step {{
    W <- W + S
  }}
  level memory every 1 step {{
    key k = grad(W)
    value x = W
    gate a = abs(grad(W)) + 0.5
    state S like W = 0
    S: minimize {objective} by solve
  }}
}}"""
KEYS = {"S * k": "k", "S": None}
VALUES = {"x": "context", "W": "current"}          # x_i = W at unit i; W = its value now
GAMMAS = {"": 1, ", gamma": "gamma", ", step": "step", ", a": "gate"}
WEIGHTS = {"": 1, "2 * ": 2}


def objective(width, key, value, gamma, weight):
    return f"{weight}window({width}, l2({key}, {value}){gamma}) + lam * l2(S, 0)"


@lru_cache(maxsize=None)
def spec(text):
    return load(text)


def run(text, steps, schedule, shapes, seed, **hparams):
    """Drive the optimizer with random W and grad(W) each step (set by hand: the data of unit i);
    returns the parameters, the optimizer and the history [(W_i, grad_i)] per parameter."""
    gen = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in shapes]
    opt = nldsl.optimizer(spec(text), params, schedule=schedule, **hparams)
    history = [[] for _ in params]
    for _ in range(steps):
        for p, past in zip(params, history):
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            past.append((p.detach().clone(), p.grad.clone()))
        opt.step()
    return params, opt, history


def explicit_objective(s, past, width, key, value, gamma, weight, lam, hp_gamma):
    """The windowed objective summed term by term over the stored history (eq. 101)."""
    units = list(enumerate(past, start=1))
    if width == "1":
        units = units[-1:]
    current_w = past[-1][0]
    total = 0
    for i, (w_i, g_i) in units:
        k_i = g_i if KEYS[key] else 1
        v_i = w_i if VALUES[value] == "context" else current_w
        gamma_i = {1: 1, "gamma": hp_gamma, "step": i, "gate": g_i.abs() + 0.5}[GAMMAS[gamma]]
        total = total + (gamma_i * 0.5 * (s * k_i - v_i) ** 2).sum()
    return WEIGHTS[weight] * total + lam * 0.5 * (s ** 2).sum()


@settings(max_examples=40, deadline=None)
@given(width=st.sampled_from(["step", "1"]), key=st.sampled_from(list(KEYS)),
       value=st.sampled_from(list(VALUES)), gamma=st.sampled_from(list(GAMMAS)),
       weight=st.sampled_from(list(WEIGHTS)), lam=st.sampled_from([0.0, 1e-3, 0.5, 3.0]),
       hp_gamma=st.floats(0.1, 2.0), steps=st.integers(1, 8),
       shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), seed=st.integers(0, 2**16))
def test_solved_state_is_the_exact_minimiser(width, key, value, gamma, weight, lam, hp_gamma,
                                             steps, shape, seed):
    text = SPEC.format(objective=objective(width, key, value, gamma, weight))
    params, opt, history = run(text, steps, "reference", [tuple(shape)], seed, lam=lam, gamma=hp_gamma)
    solved = opt.state[params[0]]["S"]
    loss = lambda s: explicit_objective(s, history[0], width, key, value, gamma, weight, lam, hp_gamma)
    gradient = func_grad(loss)(solved)
    assert gradient.abs().max() < 1e-9 * (1 + solved.abs().max())
    # and a strict minimum: a nudge raises the (convex) objective
    assert loss(solved + 1e-3) > loss(solved) and loss(solved - 1e-3) > loss(solved)


def test_flat_coordinates_solve_to_zero():
    """A coordinate that no key ever reached, with no ridge, takes its minimum-norm minimiser 0."""
    text = SPEC.format(objective=objective("step", "S * k", "x", "", ""))
    w = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = nldsl.optimizer(spec(text), [w], lam=0.0)
    for _ in range(3):
        w.grad = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64)
        opt.step()
    assert opt.state[w]["S"][1] == 0 and torch.isfinite(opt.state[w]["S"]).all()


SCHEDULE_CASES = {
    "history, context value, gate": objective("step", "S * k", "x", ", a", "2 * "),
    "history, current value, step weights": objective("step", "S * k", "W", ", step", ""),
    "last unit, running mean form": objective("1", "S", "x", ", gamma", ""),
}
SHAPES = [(3, 4), (5,), (2, 2, 2)]


@pytest.mark.parametrize("obj", SCHEDULE_CASES.values(), ids=SCHEDULE_CASES.keys())
def test_fused_equals_reference_bit_for_bit(obj):
    text = SPEC.format(objective=obj)
    paths = {s: run(text, 40, s, SHAPES, 3)[0] for s in ("reference", "fused")}
    for a, b in zip(paths["reference"], paths["fused"]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("schedule", ["reference", "fused"])
def test_state_dict_round_trip_mid_run_is_bit_identical(schedule):
    text = SPEC.format(objective=SCHEDULE_CASES["history, context value, gate"])
    gen = torch.Generator().manual_seed(7)
    data = [[(torch.randn(s, generator=gen, dtype=torch.float64),
              torch.randn(s, generator=gen, dtype=torch.float64)) for s in SHAPES] for _ in range(20)]

    def steps(params, opt, chunk):
        for unit in chunk:
            for p, (w, g) in zip(params, unit):
                with torch.no_grad():
                    p.copy_(w)
                p.grad = g.clone()
            opt.step()

    def fresh():
        params = [torch.nn.Parameter(torch.zeros(s, dtype=torch.float64)) for s in SHAPES]
        return params, nldsl.optimizer(spec(text), params, schedule=schedule)

    params, opt = fresh()
    steps(params, opt, data)
    first, opt_a = fresh()
    steps(first, opt_a, data[:10])
    saved = copy.deepcopy(opt_a.state_dict())
    assert {"_solve_S_num", "_solve_S_den"} <= set(saved["state"][0])
    resumed, opt_b = fresh()
    with torch.no_grad():
        for p, q in zip(resumed, first):
            p.copy_(q)
    opt_b.load_state_dict(saved)
    steps(resumed, opt_b, data[10:])
    for a, b in zip(params, resumed):
        assert torch.equal(a, b)
    for key in ("S", "_solve_S_num", "_solve_S_den"):
        assert all(torch.equal(opt.state[a][key], opt_b.state[b][key]) for a, b in zip(params, resumed))


def adam_run(path, schedule, steps, dtype, **hparams):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2)).to(dtype)
    opt = nldsl.optimizer(path, net.parameters(), schedule=schedule, **hparams)
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 5, generator=gen, dtype=dtype)
        opt.zero_grad()
        net(x).pow(2).mean().backward()
        opt.step()
    return [p.detach().clone() for p in net.parameters()]


@pytest.mark.parametrize("schedule", ["reference", "fused"])
@pytest.mark.parametrize("hparams", [{}, dict(lr=1e-2, betas=(0.5, 0.9), eps=1e-3)],
                         ids=["defaults", "large eps"])
def test_adam_closed_form_is_the_papers_explicit_adam(schedule, hparams):
    """P = (beta1/beta2) sqrt(H / beta2), gamma = beta2, lam = eps sqrt(H) make the solved
    momentum eq. 105's step exactly (docs/optimizers.md): equal up to float64 rounding."""
    explicit = adam_run("examples/adam_paper.nl", "reference", 300, torch.float64, **hparams)
    solved = adam_run("examples/adam_closed_form.nl", schedule, 300, torch.float64, **hparams)
    for a, b in zip(explicit, solved):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)


def test_adam_closed_form_is_derived_from_the_objective_not_the_name():
    text = open("examples/adam_closed_form.nl").read().replace("adam_closed_form", "anything")
    plan = lower(load(text))
    momentum = next(lv for lv in plan.levels if lv.name == "momentum")
    assert [w.derivation.split(":")[0] for w in momentum.writes] == ["solve"] * 3
    assert {"_solve_m_num", "_solve_m_den"} <= set(plan.states)


BAD = {
    "sliding window": ("window(3, l2(S * k, x)) + lam * l2(S, 0)", "window width", "3"),
    "matrix memory": ("window(step, l2(S @ k, x))", "not elementwise-linear", "S @ k"),
    "quadratic memory": ("window(step, l2(S * S, x))", "not elementwise-linear", "S * S"),
    "mixed value": ("window(step, l2(S * k, x + W))", "mixes", "x + W"),
    "key reads a state": ("window(step, l2(S * W, x))", "key reads a state", "W"),
    "not l2": ("window(step, lp(S * k, x, 3))", "not an l2 regression", "lp("),
    "subtracted ridge": ("window(step, l2(S * k, x)) - lam * l2(S, 0)", "subtracted", "window("),
    "two data terms": ("l2(S * k, x) + l2(S * k, W)", "more than one data term", "l2(S * k, W)"),
}


@pytest.mark.parametrize("obj, message, at", BAD.values(), ids=BAD.keys())
def test_objectives_outside_the_class_are_located_compile_errors(obj, message, at):
    text = SPEC.format(objective=obj)
    with pytest.raises(NLDSLCompileError) as caught:
        lower(load(text))
    problem = caught.value.problems[0]
    assert message in problem.message
    line = text.splitlines()[problem.line - 1]
    assert line[problem.col - 1:].startswith(at)
    assert problem.expected and problem.hint is not None


def test_solve_in_a_slower_level_is_a_located_compile_error():
    text = """optimizer slow() {
  level memory every 2 steps {
    key k = grad(W)
    state S like W = 0
    S: minimize window(step, l2(S * k, W)) by solve
  }
  level weights every 1 step {
    W <- W + S
  }
}"""
    with pytest.raises(NLDSLCompileError, match="every 1 step") as caught:
        lower(load(text))
    problem = caught.value.problems[0]
    assert text.splitlines()[problem.line - 1][problem.col - 1:].startswith("solve")
