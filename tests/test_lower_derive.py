"""Every closed form of the derivation table equals the autograd step it replaces
(hypothesis: random shapes, values and hyper-parameters)."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.func import grad as func_grad

from nldsl.language import ast
from nldsl.lower.derive import closed_grad, derive
from nldsl.optim.evaluate import TensorEvaluator
from nldsl.language.parser import parse

dims = st.integers(1, 5)
seeds = st.integers(0, 2**16)


def objective_of(loss: str, rule: str = "gd(1)") -> ast.Objective:
    """The objective of a one-line spec `S: minimize <loss> by <rule>`."""
    text = "optimizer t() { level a every 1 step { S: minimize %s by %s } }" % (loss, rule)
    return parse(text, "t").levels[0].items[0]


def loss_of(text: str) -> ast.Expr:
    return objective_of(text).loss


def tensors(seed, rows, cols):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
    return {"S": r(rows, cols), "v": r(rows, cols), "k": r(cols, 1), "y": r(rows, 1), "c": 0.7}


def autograd_gradient(loss, env):
    def f(s):
        return TensorEvaluator(lambda n: s if n == "S" else env[n])(loss)
    return func_grad(f)(env["S"])


OBJECTIVES = {
    "hebbian dot": "dot(S, v)",
    "negative dot (ema)": "-dot(S, v)",
    "l2": "l2(S, v)",
    "delta rule": "l2(S @ k, y)",
    "matrix hebbian": "dot(S @ k, y)",
    "eq 44 (l2 + orthogonality)": "l2(S, v) + orthogonality(S)",
    "delta momentum": "dot(S, v) + dot(v, v) * l2(S, 0)",
    "scaled sum": "c * l2(S, v) - dot(S, v) / 2",
}


@pytest.mark.parametrize("text", OBJECTIVES.values(), ids=OBJECTIVES.keys())
def test_closed_gradient_equals_autograd(text):
    loss = loss_of(text)
    derived = closed_grad(loss, "S")

    @settings(max_examples=15, deadline=None)
    @given(seeds, dims, dims)
    def check(seed, rows, cols):
        env = tensors(seed, rows, cols)
        closed = TensorEvaluator(env.__getitem__)(derived)
        torch.testing.assert_close(closed + 0 * env["S"], autograd_gradient(loss, env))

    check()


def _step(write, env):
    evaluate = TensorEvaluator(env.__getitem__)
    return evaluate(write.value)


@settings(max_examples=20, deadline=None)
@given(seeds, dims, dims, st.floats(0.01, 1.0), st.floats(0.5, 1.0))
def test_gd_closed_form_equals_autograd_step(seed, rows, cols, lr, decay):
    env = {**tensors(seed, rows, cols), "lr": lr, "decay": decay}
    objective = objective_of("l2(S @ k, y)", "gd(lr, decay)")
    write = derive(objective, "S", None)
    expected = decay * env["S"] - lr * autograd_gradient(objective.loss, env)
    torch.testing.assert_close(_step(write, env), expected)


@settings(max_examples=20, deadline=None)
@given(seeds, dims, dims, st.floats(0.0, 1.0))
def test_ema_closed_form_is_an_exponential_moving_average(seed, rows, cols, beta):
    env = {**tensors(seed, rows, cols), "beta": beta}
    objective = objective_of("-dot(S, v)", "ema(beta)")
    expected = beta * env["S"] + (1 - beta) * env["v"]
    torch.testing.assert_close(_step(derive(objective, "S", None), env), expected)


@settings(max_examples=20, deadline=None)
@given(seeds, dims, dims, st.floats(0.01, 2.0))
def test_dgd_is_the_exact_proximal_step_of_eq_56(seed, rows, cols, lr):
    """eq. 57 is argmin_S l2(S k, y) + 1/(2 lr) ||S - S_t||^2: the gradient there vanishes."""
    env = {**tensors(seed, rows, cols), "lr": lr}
    objective = objective_of("l2(S @ k, y)", "dgd(lr)")
    new = _step(derive(objective, "S", None), env)
    prox = lambda s: TensorEvaluator(lambda n: s if n == "S" else env[n])(objective.loss) + \
        ((s - env["S"]) ** 2).sum() / (2 * lr)
    assert func_grad(prox)(new).abs().max() < 1e-9


@settings(max_examples=15, deadline=None)
@given(seeds, dims, dims)
def test_cubic_newton_schulz_step_is_a_gradient_step_of_eq_44(seed, rows, cols):
    env = tensors(seed, rows, cols)
    objective = objective_of("l2(S, v) + orthogonality(S)", 'newton_schulz(1, "cubic")')
    loss = objective.loss
    write = derive(objective, "S", ast.Name(id="v"))
    expected = env["S"] - 0.25 * autograd_gradient(loss, env)
    torch.testing.assert_close(_step(write, env), expected)


def test_objective_outside_the_table_falls_back_to_autograd():
    objective = objective_of("l2(tanh(S), v)")
    write = derive(objective, "S", None)
    assert write.autograd is not None and write.value is None


# ---------------------------------------------------------------- momentum and `then` chains

def _trajectory(body: str, schedule: str, steps: int = 4) -> list[torch.Tensor]:
    """W after each step of `optimizer o { <body> }` on two 3x4 matrices (fused groups them)
    and a 5x2 one, with gradients W + sin(3 W + t)/10 that feed the trajectory back."""
    import nldsl
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*s, generator=gen, dtype=torch.float64))
              for s in [(3, 4), (3, 4), (5, 2)]]
    opt = nldsl.optimizer("optimizer o(lr = 0.1 > 0) {\n%s\n}\n" % body, params, schedule)
    path = []
    for t in range(1, steps + 1):
        for p in params:
            p.grad = p.detach() + 0.1 * torch.sin(3 * p.detach() + t)
        opt.step()
        path.append(torch.cat([p.detach().flatten() for p in params]))
    return path


def _by_hand(update, steps: int = 4) -> list[torch.Tensor]:
    """The same run, each tensor's state advanced by `update(state, g) -> new W` in Python."""
    gen = torch.Generator().manual_seed(0)
    ws = [torch.randn(*s, generator=gen, dtype=torch.float64) for s in [(3, 4), (3, 4), (5, 2)]]
    states = [{} for _ in ws]
    path = []
    for t in range(1, steps + 1):
        ws = [update(st, w, w + 0.1 * torch.sin(3 * w + t)) for st, w in zip(states, ws)]
        path.append(torch.cat([w.flatten() for w in ws]))
    return path


def _momentum(st, w, g):
    """Titans eqs. 13-14 on l2(m, g): grad = m - g; buf <- 0.9 buf - 0.1 grad; m <- 0.95 m + buf."""
    m, buf = st.get("m", torch.zeros_like(w)), st.get("buf", torch.zeros_like(w))
    st["buf"] = 0.9 * buf - 0.1 * (m - g)
    st["m"] = 0.95 * m + st["buf"]
    return w - 0.1 * st["m"]


def _ema_ns_gd(st, w, g):
    """-dot(m, g): u = -g; ema: b <- 0.9 b + 0.1 u; newton_schulz: u <- NS(b); gd: m <- m - 0.5 u."""
    from nldsl.optim.kernels import newton_schulz
    b, m = st.get("b", torch.zeros_like(w)), st.get("m", torch.zeros_like(w))
    st["b"] = 0.9 * b + 0.1 * -g
    st["m"] = m - 0.5 * newton_schulz(st["b"], 3, precision="float64")
    return w - 0.1 * st["m"]


def _autograd_chain(st, w, g):
    """lp(m, g, 3): grad = sign(m - g) |m - g|^2; momentum(0.2, 0.5): b <- 0.5 b + 0.2 grad;
    gd(1, decay 0.9): m <- 0.9 m - b."""
    b, m = st.get("b", torch.zeros_like(w)), st.get("m", torch.zeros_like(w))
    st["b"] = 0.5 * b + 0.2 * torch.sign(m - g) * (m - g).abs() ** 2
    st["m"] = 0.9 * m - st["b"]
    return w - 0.1 * st["m"]


CHAINS = {
    "momentum(lr, beta, decay)": ("m: minimize l2(m, grad(W)) by momentum(0.1, beta = 0.9, decay = 0.95)",
                                  _momentum),
    "ema then newton_schulz then gd": (
        'm: minimize -dot(m, grad(W)) by ema(0.9) then newton_schulz(3, precision = "float64") '
        "then gd(0.5)", _ema_ns_gd),
    "momentum then gd, autograd gradient": (
        "m: minimize lp(m, grad(W), 3) by momentum(0.2, beta = 0.5) then gd(1, decay = 0.9)",
        _autograd_chain),
}


@pytest.mark.parametrize("schedule", ["reference", "fused"])
@pytest.mark.parametrize("objective, update", CHAINS.values(), ids=CHAINS.keys())
def test_momentum_and_chains_follow_their_recurrences(objective, update, schedule):
    """docs/language.md, "Chains": both schedules against the recurrence written by hand. The
    same float64 operations in other orders (and batched Newton-Schulz in fused, whose float64
    rounding bound is 3e-11 on these shapes): a few ulps per step, well inside 1e-10."""
    body = ("  level m every 1 step {\n    state m like W = 0\n    %s\n  }\n"
            "  level w every 1 step { W <- W - lr * m }" % objective)
    for got, want in zip(_trajectory(body, schedule), _by_hand(update)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_a_chained_momentum_then_gd_is_the_momentum_rule_with_its_decay():
    """docs/language.md: `momentum(lr, beta) then gd(lr = 1, decay = d)` equals
    `momentum(lr, beta, decay = d)`: the buffers are negatives of each other, exactly."""
    level = ("  level m every 1 step {\n    state m like W = 0\n    m: minimize l2(m, grad(W)) by %s\n  }\n"
             "  level w every 1 step { W <- W - lr * m }")
    chained = _trajectory(level % "momentum(0.1, beta = 0.9) then gd(lr = 1, decay = 0.95)", "reference")
    single = _trajectory(level % "momentum(0.1, beta = 0.9, decay = 0.95)", "reference")
    for a, b in zip(chained, single):
        assert torch.equal(a, b)


def test_dgd_precondition_is_refused_for_optimizers():
    """eq. 88's preconditioner needs a module memory's previous token state: a located error."""
    from nldsl.errors import NLDSLCompileError
    rule = ast.Rule(name="dgd", args=[ast.Name(id="lr")],
                    kwargs=[ast.Keyword(name="precondition", value=ast.Bool(value=True))])
    objective = ast.Objective(state="S", loss=loss_of("l2(S @ k, y)"), rules=[rule])
    with pytest.raises(NLDSLCompileError, match="a rule of module memories"):
        derive(objective, "S", None)
