"""Every closed form of the derivation table equals the autograd step it replaces
(hypothesis: random shapes, values and hyper-parameters)."""
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.func import grad as func_grad

from nldsl import ast
from nldsl.optim.derive import closed_grad, derive
from nldsl.optim.evaluate import Evaluator
from nldsl.parser import parse

dims = st.integers(1, 5)
seeds = st.integers(0, 2**16)


def loss_of(text: str) -> ast.Expr:
    """The objective of a one-line spec `S: minimize <text> by gd(1)`."""
    decl = parse("optimizer t() { level a every 1 step { S: minimize %s by gd(1) } }" % text, "t")
    return decl.levels[0].items[0].loss


def tensors(seed, rows, cols):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
    return {"S": r(rows, cols), "v": r(rows, cols), "k": r(cols, 1), "y": r(rows, 1), "c": 0.7}


def autograd_gradient(loss, env):
    def f(s):
        return Evaluator(lambda n: s if n == "S" else env[n])(loss)
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
        closed = Evaluator(env.__getitem__)(derived)
        torch.testing.assert_close(closed + 0 * env["S"], autograd_gradient(loss, env))

    check()


def _step(write, env):
    evaluate = Evaluator(env.__getitem__)
    return evaluate(write.value)


@settings(max_examples=20, deadline=None)
@given(seeds, dims, dims, st.floats(0.01, 1.0), st.floats(0.5, 1.0))
def test_gd_closed_form_equals_autograd_step(seed, rows, cols, lr, decay):
    env = {**tensors(seed, rows, cols), "lr": lr, "decay": decay}
    objective = ast.Objective(state="S", loss=loss_of("l2(S @ k, y)"),
                              rules=[ast.Rule(name="gd", args=[ast.Name(id="lr"), ast.Name(id="decay")])])
    write = derive(objective, "S", None)
    expected = decay * env["S"] - lr * autograd_gradient(objective.loss, env)
    torch.testing.assert_close(_step(write, env), expected)


@settings(max_examples=20, deadline=None)
@given(seeds, dims, dims, st.floats(0.0, 1.0))
def test_ema_closed_form_is_an_exponential_moving_average(seed, rows, cols, beta):
    env = {**tensors(seed, rows, cols), "beta": beta}
    objective = ast.Objective(state="S", loss=loss_of("-dot(S, v)"),
                              rules=[ast.Rule(name="ema", args=[ast.Name(id="beta")])])
    expected = beta * env["S"] + (1 - beta) * env["v"]
    torch.testing.assert_close(_step(derive(objective, "S", None), env), expected)


@settings(max_examples=20, deadline=None)
@given(seeds, dims, dims, st.floats(0.01, 2.0))
def test_dgd_is_the_exact_proximal_step_of_eq_56(seed, rows, cols, lr):
    """eq. 57 is argmin_S l2(S k, y) + 1/(2 lr) ||S - S_t||^2: the gradient there vanishes."""
    env = {**tensors(seed, rows, cols), "lr": lr}
    objective = ast.Objective(state="S", loss=loss_of("l2(S @ k, y)"),
                              rules=[ast.Rule(name="dgd", args=[ast.Name(id="lr")])])
    new = _step(derive(objective, "S", None), env)
    prox = lambda s: Evaluator(lambda n: s if n == "S" else env[n])(objective.loss) + \
        ((s - env["S"]) ** 2).sum() / (2 * lr)
    assert func_grad(prox)(new).abs().max() < 1e-9


@settings(max_examples=15, deadline=None)
@given(seeds, dims, dims)
def test_cubic_newton_schulz_step_is_a_gradient_step_of_eq_44(seed, rows, cols):
    env = tensors(seed, rows, cols)
    loss = loss_of("l2(S, v) + orthogonality(S)")
    objective = ast.Objective(state="S", loss=loss, rules=[ast.Rule(
        name="newton_schulz", args=[ast.Number(value=1), ast.String(value="cubic")])])
    write = derive(objective, "S", ast.Name(id="v"))
    expected = env["S"] - 0.25 * autograd_gradient(loss, env)
    torch.testing.assert_close(_step(write, env), expected)


def test_objective_outside_the_table_falls_back_to_autograd():
    objective = ast.Objective(state="S", loss=loss_of("l2(tanh(S), v)"),
                              rules=[ast.Rule(name="gd", args=[ast.Number(value=1)])])
    write = derive(objective, "S", None)
    assert write.autograd is not None and write.value is None
