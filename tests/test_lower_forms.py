"""nldsl/lower/forms.py: which updates are the linear-memory form

    M_t = a_t M_{t-1} - c_t (M_{t-1} k_t) k_t^T + w_t k_t^T

and with which decay a, erase c, key k and write w. Coefficients are compared by value (a
small evaluator below, with numbers for the gate names), so that how the recogniser folds
signs and sums does not matter; keys and reads by their printed text.
"""
from __future__ import annotations

import math

import pytest

from nldsl.language import ast
from nldsl.lower.forms import linear_form, placeholder
from nldsl.lower.module import lower_module
from nldsl.module.checks import resolve_hparams
from nldsl.language.printer import format_expr
from nldsl.spec import load

#: Values for the scalar names a coefficient may use (gates, hyper-parameters, k.k).
ENV = {"b": 0.3, "a": 0.7, "beta": 0.3, "alpha": 0.7, "lr": 0.45, "decay": 0.85, "eta": 0.2,
       "v": 1.9, "vv": 1.9, "kk": 1.3, "k": 1.3}


def value(e: ast.Expr, env=ENV) -> float:
    """Scalar arithmetic of a coefficient; names are numbers, dot(a, b) is a * b."""
    if isinstance(e, ast.Number):
        return e.value
    if isinstance(e, ast.Name):
        return env[e.id]
    if isinstance(e, ast.Unary) and e.op == "-":
        return -value(e.operand, env)
    if isinstance(e, ast.Binary):
        left, right = value(e.left, env), value(e.right, env)
        return {"+": left + right, "-": left - right, "*": left * right, "/": left / right,
                "@": left * right}[e.op]
    if isinstance(e, ast.Call) and e.func in ("dot",):
        return value(e.args[0], env) * value(e.args[1], env)
    if isinstance(e, ast.Call) and e.func == "sigmoid":
        return 1 / (1 + math.exp(-value(e.args[0], env)))
    raise AssertionError(f"not a scalar coefficient: {format_expr(e)}")


def program(text_or_name, **hparams):
    spec = load(text_or_name)
    return lower_module(spec, resolve_hparams(spec, hparams))


def form(text_or_name, **hparams):
    p = program(text_or_name, **hparams)
    assert len(p.levels) == 1
    return linear_form(p.levels[0], p)


_SPEC = '''module user(dim: int >= 1, nh = 2 >= 1) {
  state P : [dim, nh * 4] = normal(0.02)
  state Q : [dim, nh * 4] = normal(0.02)
  state G : [dim, nh] = normal(0.02)
  state A : [dim, nh] = normal(0.02)
  state O : [nh * 4, dim] = normal(0.02)
  level fast LEVEL {
    STATE
    key kk = l2norm(x @ P)
    key k2 = x @ Q
    value vv = x @ Q
    gate b = sigmoid(x @ G)
    gate a = sigmoid(x @ A)
    UPDATE
    READ
  }
  out = r @ O
}
'''


def user(update, level="every 1 token heads nh backprop", state="state S : [4, 4] = 0",
         read="read r = S(kk)"):
    return (_SPEC.replace("UPDATE", update).replace("LEVEL", level).replace("STATE", state)
            .replace("READ", read))


# -- recognised, with coefficients -------------------------------------------------------------

#: id -> (spec, hparams, decay a, erase c, key, write w with v = vv = 1.9): the numbers are the
#: papers' coefficients at ENV's gate values.
RECOGNISED = {
    "linear_attention": ("linear_attention", dict(dim=8, lr=0.45, decay=0.85),
                         0.85, 0.0, "k", 0.45 * 1.9),
    "deltanet": ("deltanet", dict(dim=8), 1.0, 0.3, "k",   # the key is the context's name
                 0.3 * 1.9),
    "gated_deltanet": ("gated_deltanet", dict(dim=8), 0.7, 0.7 * 0.3,
                       "k", 0.3 * 1.9),
    "deltanet_recurrence": ("examples/deltanet_recurrence.nl", dict(dim=8), 1.0, 0.3,
                            "k", 0.3 * 1.9),
    "gated_deltanet_recurrence": ("examples/gated_deltanet_recurrence.nl", dict(dim=8),
                                  0.7, 0.21, "k", 0.3 * 1.9),
    "explicit-delta": (user("S <- S - b * outer(S @ kk - vv, kk)"), dict(dim=6),
                       1.0, 0.3, "kk", 0.3 * 1.9),
    "gd-l2": (user("minimize l2(S(kk), vv) by gd(lr = b)"), dict(dim=6), 1.0, 0.3, "kk",
              0.3 * 1.9),
    "gd-l2-decay": (user("minimize l2(S(kk), vv) by gd(lr = b, decay = a)"), dict(dim=6),
                    0.7, 0.3, "kk", 0.3 * 1.9),
    "gd-dot-hebbian": (user("minimize -dot(S(kk), vv) by gd(lr = b)"), dict(dim=6), 1.0, 0.0,
                       "kk", 0.3 * 1.9),
    "ema-l2": (user("minimize l2(S(kk), vv) by ema(beta = a)"), dict(dim=6), 0.7, 0.3,
               "kk", 0.3 * 1.9),
    "expanded-terms": (user("S <- S - b * outer(S(kk), kk) + b * outer(vv, kk)"), dict(dim=6),
                       1.0, 0.3, "kk", 0.3 * 1.9),
    "gated-explicit": (user("S <- a * S - b * outer(a * S(kk) - vv, kk)"), dict(dim=6),
                       0.7, 0.21, "kk", 0.3 * 1.9),
    "negations": (user("S <- -(b * outer(S(kk) - vv, kk) - S)"), dict(dim=6), 1.0, 0.3, "kk",
                  0.3 * 1.9),
    "division-by-free": (user("S <- S / a - outer(S(kk), kk) / 2 + outer(vv, kk)"), dict(dim=6),
                         1 / 0.7, 0.5, "kk", 1.9),
    "sum-of-decays": (user("S <- a * S + (1 - a) * S - b * outer(S(kk) - vv, kk)"),
                      dict(dim=6), 1.0, 0.3, "kk", 0.3 * 1.9),
    "overwrite-no-decay": (user("S <- outer(vv, kk)"), dict(dim=6), 0.0, 0.0, "kk", 1.9),
    "dgd": (user("minimize l2(S(kk), vv) by dgd(lr = b)"), dict(dim=6), 1.0, None, "kk", None),
}


@pytest.mark.parametrize("name", list(RECOGNISED))
def test_recognised_form(name):
    spec, hparams, decay, erase, key, write = RECOGNISED[name]
    f = form(spec, **hparams)
    assert f is not None, f"{name} must be recognised"
    assert format_expr(f.key) == key
    assert value(f.decay) == pytest.approx(decay, rel=1e-12)
    if erase is not None:
        assert value(f.erase) == pytest.approx(erase, rel=1e-12)
    if write is not None:
        assert value(f.write) == pytest.approx(write, rel=1e-12)


def test_dgd_erase_is_the_normalised_rate():
    """DGD (NL eq. 57): lr' = lr / (1 + lr k.k) in the erase and the write."""
    f = form(user("minimize l2(S(kk), vv) by dgd(lr = b)"), dim=6)
    rate = 0.3 / (1 + 0.3 * 1.3 * 1.3)
    assert value(f.erase) == pytest.approx(rate, rel=1e-12)
    assert value(f.write) == pytest.approx(rate * 1.9, rel=1e-12)


def test_hebbian_erase_is_the_number_zero():
    """c = 0 is recognised as the literal 0 (the chunked schedule then skips the solve)."""
    f = form("linear_attention", dim=8)
    assert f.erase == ast.Number(value=0)


def test_reads_become_placeholders():
    f = form("deltanet", dim=8)
    assert f.state == "M"
    assert f.queries == {placeholder("M", 0): (ast.Name(id="q"), False)}
    assert format_expr(f.reads["y"]) == "rmsnorm(M@0) * o_norm"


def test_two_applications_and_before_write():
    f = form(user("S <- S - b * outer(S @ kk - vv, kk)",
                  read="read r = S(kk) + S @ k2 before write"), dim=6)
    assert [(format_expr(q), before) for q, before in f.queries.values()] == \
        [("kk", True), ("k2", True)]
    assert format_expr(f.reads["r"]) == "S@0 + S@1"


# -- not the form ---------------------------------------------------------------------------

NOT_RECOGNISED = {
    "chunk-4-gradient": user("minimize l2(S(kk), vv) by gd(lr = b)",
                             level="every 1 token chunk 4 heads nh backprop"),
    "chunk-2-explicit": user("S <- a * S + b * outer(vv, kk)", read="read r = S(kk) before write",
                             level="every 1 token chunk 2 heads nh backprop"),
    "channel-wise-write-factor": user("S <- a * S + sigmoid(k2) * outer(vv, kk)"),
    "every-2": user("minimize l2(S(kk), vv) by gd(lr = b)",
                    level="every 2 tokens heads nh backprop"),
    "momentum": user("minimize l2(S(kk), vv) by momentum(lr = b, beta = 0.9)"),
    "two-keys-erase": user("S <- S - b * outer(S(kk), k2)"),
    "erase-and-write-keys-differ": user("S <- S - b * outer(S(kk) - vv, kk) + outer(vv, k2)"),
    "no-key-at-all": user("S <- a * S"),
    "quadratic": user("S <- S @ S"),
    "nonlinear": user("S <- tanh(S) + outer(vv, kk)"),
    "coefficient-uses-state": user("S <- S - dot(S(kk), kk) * outer(vv, kk)"),
    "divide-by-state": user("S <- outer(vv, kk) / S"),
    "free-term-not-outer": user("S <- S + b"),
    "vector-state": user("S <- S - b * kk", state="state S : [4] = 0", read="read r = S * kk"),
    "read-not-an-application": user("S <- S - b * outer(S(kk) - vv, kk)",
                                    read="read r = transpose(S) @ kk"),
    "context-uses-state": user("S <- S - b * outer(S(kk) - vv, kk)",
                               read="read r = S(kk)\n    key z = S(kk)"),
}


@pytest.mark.parametrize("name", list(NOT_RECOGNISED))
def test_not_the_form(name):
    assert form(NOT_RECOGNISED[name], dim=6) is None


def test_two_states_are_not_the_form():
    text = user("S <- S - b * outer(S(kk) - vv, kk)\n    T <- T + outer(vv, kk)",
                state="state S : [4, 4] = 0\n    state T : [4, 4] = 0",
                read="read r = S(kk) + T(kk)")
    assert form(text, dim=6) is None
