"""check_vocabulary: the built-ins table says which kinds of spec may use each built-in and
where (builtins.Builtin.kinds / places / optimizer_ok); `grad(X)`; mlp options. The table's
shape column is the one source of every list of built-ins by shape class."""
from __future__ import annotations

import pytest

from nldsl.validation import shapes as check_shapes

from nldsl import fuzzing
from nldsl.build import build
from nldsl.language.builtins import FUNCTIONS, LAST_DIM_SHAPES, MLP_ACTIVATIONS, SHAPES, shaped
from nldsl.validation.common import Checker
from nldsl.validation.vocabulary import check_grad_args, check_mlp_options, check_period_calls, \
    check_vocabulary
from nldsl.errors import Source
from nldsl.lower import forms, heads
from nldsl.language.parser import parse

OPT = "optimizer o(lr = 0.1) {{\n level a every 1 step {{\n  state m like W = 0\n  {body}\n }}\n}}"
MOD = ("module s(dim) {{\n state Wk : [dim, dim] = normal(0.02)\n level a every 1 token {{\n"
       "  state M : [dim, dim] = 0\n  {body}\n  read y = M(x)\n }}\n out = y\n}}")


def run(check, template: str, body: str) -> list[str]:
    text = template.format(body=body, options=body)
    checker = Checker(build(parse(text)), Source(text))
    check(checker)
    return [p.message for p in checker.problems]


def sample_call(name: str) -> str:
    builtin = FUNCTIONS[name]
    return f"{name}({', '.join(['W'] * builtin.min_args)})"


@pytest.mark.parametrize("name", sorted(n for n, f in FUNCTIONS.items() if "optimizer" not in f.kinds))
def test_module_only_builtins_are_rejected_in_optimizers(name):
    messages = run(check_vocabulary, OPT, f"W <- W - lr * {sample_call(name)}")
    assert len(messages) == 1 and messages[0].startswith(f"`{name}` ")
    assert "optimizers have" in messages[0]


@pytest.mark.parametrize("name", sorted(n for n, f in FUNCTIONS.items()
                                        if "optimizer" in f.kinds and not f.optimizer_ok
                                        and "expression" in f.places))
def test_builtins_the_optimizer_compiler_lacks_are_rejected(name):
    assert run(check_vocabulary, OPT, f"W <- W - lr * {sample_call(name)}") == [
        f"`{name}` is not compiled for optimizers yet"]


@pytest.mark.parametrize("template", [OPT, MOD], ids=["optimizer", "module"])
def test_the_omega_rule_only_in_losses(template):
    body = "let e = window(2, l2(W, 0))" + ("\n  W <- W - e" if template is OPT else "")
    assert run(check_vocabulary, template, body) == [
        "`window` sums a loss over past units (Atlas' Omega rule): it can only appear in a "
        "`minimize` loss, not in an expression"]


@pytest.mark.parametrize("name", ["dot", "l2", "lp", "orthogonality"])
def test_losses_are_values_too(name):
    """Both compilers compute a loss as a value (`dot(S(k), k)` in an explicit update)."""
    assert run(check_vocabulary, MOD, f"let e = {sample_call(name).replace('W', 'x')}") == []


@pytest.mark.parametrize("name", ["zeros", "ones", "eye", "normal", "uniform"])
def test_init_builtins_only_as_initial_values(name):
    assert run(check_vocabulary, MOD, f"let e = x + {name}()") == [
        f"`{name}` is an initial-value built-in: it can only be a state's initial value, "
        "not in an expression"]
    assert run(check_vocabulary, MOD, f"state N : [dim] = {name}()\n  N <- N") == []


@pytest.mark.parametrize("body", [
    pytest.param("key k = conv(x @ Wk, 4)\n  minimize l2(M(k), x) by gd(0.1)", id="conv"),
    pytest.param("let a = attention(x, x, x)\n  minimize -dot(M(x), a) by gd(0.1)", id="attention"),
    pytest.param("minimize huber(M(x), x, 1) by gd(0.1)", id="huber-objective"),
    pytest.param("let g = rmsnorm(x)\n  minimize l2(M(g), x) by gd(0.1)", id="rmsnorm"),
])
def test_module_uses_are_valid(body):
    assert run(check_vocabulary, MOD, body) == []


@pytest.mark.parametrize("body", [
    pytest.param("m: minimize -dot(m, grad(W)) by ema(0.9)\n  W <- W - lr * m", id="dot-loss"),
    pytest.param("W <- W - lr * sqrt(grad(W) * grad(W)) * max(lr, 2) / size(W, 0)", id="math"),
])
def test_optimizer_uses_are_valid(body):
    assert run(check_vocabulary, OPT, body) == []


@pytest.mark.parametrize("body, expected", [
    pytest.param("W <- W - lr * grad(W * 2)", "`grad` takes the name of a parameter, not `W * 2`",
                 id="expression"),
    pytest.param("W <- W - lr * grad(3)", "`grad` takes the name of a parameter, not `3`",
                 id="number"),
    pytest.param("W <- W - grad(lr)",
                 "an optimizer is given the gradient of `W` only, not of a hyper-parameter 'lr'",
                 id="hyper-parameter"),
    pytest.param("m <- m + grad(W)\n  W <- W - lr * grad(m)",
                 "an optimizer is given the gradient of `W` only, not of its own state 'm'",
                 id="own-state"),
])
def test_grad_in_optimizers(body, expected):
    assert run(check_grad_args, OPT, body) == [expected]


def test_grad_of_w_and_of_module_states_is_valid():
    assert run(check_grad_args, OPT, "W <- W - lr * grad(W)") == []
    assert run(check_grad_args, MOD, "let g = grad(Wk)\n  M <- M + outer(g @ x, x)") == []


def test_grad_in_modules_takes_a_state():
    assert run(check_grad_args, MOD, "let h = x\n  let g = grad(h)\n  M <- M") == [
        "'h' is not a state: `grad` is the task loss's gradient with respect to a state"]


MLP = ("module s(dim) {{\n level a every 1 token {{\n  state M : mlp(dim -> dim, {options})\n"
       "  minimize l2(M(x), x) by gd(0.1)\n  read y = M(x)\n }}\n out = y\n}}")


@pytest.mark.parametrize("options", [*MLP_ACTIVATIONS, "gelu, residual", "residual",
                                     "gelu, layernorm, residual", "layernorm"])
def test_known_mlp_options(options):
    assert run(check_mlp_options, MLP, options) == []


FIRST_OPTION = len("  state M : mlp(dim -> dim, ") + 1


@pytest.mark.parametrize("options, expected, offset", [
    ("gleu", "unknown mlp option 'gleu'", 0),
    ("gelu, bogus", "unknown mlp option 'bogus'", 6),
    ("bias, residual", "unknown mlp option 'bias'", 0),
    ("gelu, silu", "an mlp has one activation, but this one names 'gelu' and 'silu'", 6),
    ("residual, residual", "mlp option 'residual' is given twice", 10),
], ids=["gleu", "bogus", "bias", "two-activations", "repeated"])
def test_unknown_mlp_options_are_located(options, expected, offset):
    col = FIRST_OPTION + offset
    text = MLP.format(options=options)
    checker = Checker(build(parse(text)), Source(text))
    check_mlp_options(checker)
    assert [(p.message, p.line, p.col) for p in checker.problems] == [(expected, 3, col)]


def test_a_misspelt_activation_gets_a_suggestion():
    text = MLP.format(options="gleu")
    checker = Checker(build(parse(text)), Source(text))
    check_mlp_options(checker)
    assert checker.problems[0].hint == "did you mean 'gelu'?"


def test_every_builtin_has_a_known_shape_class():
    """The shape column (builtins.SHAPES) classifies every built-in, and every class is used."""
    assert {f.shape for f in FUNCTIONS.values()} == set(SHAPES)
    assert set(LAST_DIM_SHAPES) | check_shapes._KEEPS_DIMS <= set(SHAPES)


@pytest.mark.parametrize("table, shapes", [
    (forms._ELEMENTWISE, ("elementwise", "broadcast")),
    (forms._REDUCING, ("reduce_all", "last_dim_reduce")),
    (heads.SAME, ("elementwise", "identity", "last_dim_keep", "positional")),
    (heads.ATTENTION, ("attention",)),
    (heads.POSITIONAL, ("positional",)),
    (heads.LAST_TO_ONE, ("last_dim_reduce",)),
    (heads.REDUCE_ALL, ("reduce_all",)),
    (heads.SCALAR, ("number",)),
    (heads.BROADCAST, ("broadcast",)),
    (heads.LAST_DIM, LAST_DIM_SHAPES),
    (fuzzing.POINTWISE, ("elementwise",)),
    (fuzzing.ELEMENTWISE, ("elementwise", "last_dim_keep", "identity")),
    (fuzzing.LAST_DIM_REDUCTIONS, ("last_dim_reduce",)),
    (fuzzing.INITIALISERS, ("init",)),
], ids=["forms-elementwise", "forms-reducing", "heads-same", "heads-attention", "heads-positional",
        "heads-last-to-one", "heads-reduce-all", "heads-scalar", "heads-broadcast",
        "heads-last-dim", "fuzzing-pointwise", "fuzzing-elementwise", "fuzzing-reductions",
        "fuzzing-initialisers"])
def test_each_table_of_builtins_is_exactly_its_shape_classes(table, shapes):
    assert set(table) == set(shaped(*shapes))
    assert len(table) == len(set(table))


def test_shaped_refuses_an_unknown_class():
    with pytest.raises(ValueError, match="unknown shape classes"):
        shaped("pointwise")


PERIOD = ("module s(dim) {{\n state W : [dim, 1] = normal(0.02)\n"
          " level a every 2 tokens once {{\n  state M : [dim, dim] = 0\n  {body}\n }}\n"
          " out = {out}\n}}")
PERIOD_MESSAGE = ("`period_mean` averages over a token level's period: it can only be a context "
                  "(key, value, query, gate, let) of a token level")


def run_period(body: str, out: str = "y") -> list[tuple[str, int, int]]:
    text = PERIOD.format(body=body, out=out)
    checker = Checker(build(parse(text)), Source(text))
    check_period_calls(checker)
    return [(p.message, p.line, p.col) for p in checker.problems]


def test_period_mean_in_a_token_levels_gate_is_accepted():
    body = ("gate g = sigmoid(period_mean(x @ W))\n  minimize l2(M(x), x) by gd(lr = g)\n"
            "  read y = M(x)")
    assert run_period(body) == []


@pytest.mark.parametrize("body, out, line, col", [
    ("minimize period_mean(l2(M(x), x)) by gd(lr = 0.1)\n  read y = M(x)", "y", 5, 12),
    ("minimize l2(M(x), x) by gd(lr = 0.1)\n  read y = period_mean(M(x))", "y", 6, 12),
    ("minimize l2(M(x), x) by gd(lr = 0.1)\n  read y = M(x)", "period_mean(y)", 8, 8),
], ids=["in-a-loss", "in-a-read", "in-out"])
def test_period_mean_outside_a_context_is_located(body, out, line, col):
    assert run_period(body, out) == [(PERIOD_MESSAGE, line, col)]


@pytest.mark.parametrize("call, ok", [
    ('rmsnorm(x, "machine")', True), ("rmsnorm(x, 1e-6)", True), ("rmsnorm(x)", True),
    ('rmsnorm(x, eps = "machine")', True), ('rmsnorm(x, "double")', False),
    ('rmsnorm(x, eps = "tiny")', False),
], ids=["machine", "number", "default", "keyword-machine", "bad-string", "bad-keyword"])
def test_rmsnorm_eps_is_a_number_or_machine(call, ok):
    body = f"key k = {call}\n  minimize l2(M(k), x) by gd(lr = 0.1)\n  read y = M(x)"
    problems = run_period(body)
    assert (problems == []) is ok
    assert all("is not a number or \"machine\"" in p[0] for p in problems)


def test_layernorm_mlp_option_is_for_modules_only():
    text = ("optimizer o(lr = 0.1) {\n level a every 1 step {\n"
            "  state M : mlp(2 -> 2, layernorm)\n  minimize l2(M(W), W) by gd(lr)\n }\n}")
    checker = Checker(build(parse(text)), Source(text))
    check_mlp_options(checker)
    assert [(p.message, p.line) for p in checker.problems] == [
        ("mlp option 'layernorm' is compiled for module specs only", 3)]
