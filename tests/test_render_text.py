"""nldsl/render/text.py and specialise.py: label text that reads like the paper and fits."""
from __future__ import annotations

import pytest

import nldsl
from nldsl.language.consteval import hparam_values
from nldsl.language.parser import parse
from nldsl.language.printer import format_expr
from nldsl.render.specialise import specialise
from nldsl.render.text import CONTINUATION, fit, greek, html, pretty, truncate, wrap


@pytest.mark.parametrize("name, shown", [
    ("eta", "η"), ("beta1", "β1"), ("alpha", "α"), ("eps", "ε"),
    ("W_eta", "W_eta"), ("betas", "betas"), ("lr", "lr"), ("etas", "etas"),
])
def test_greek(name, shown):
    assert greek(name) == shown


def test_pretty_keeps_strings_and_draws_arrows():
    assert pretty('mlp(d -> d) "eta" eta M <- 1') == 'mlp(d → d) "eta" η M ← 1'


@pytest.mark.parametrize("width", [10, 20, 37])
def test_truncate_fits_and_marks_the_cut(width):
    text = "momentum(lr = theta, beta = eta, decay = 1 - alpha)"
    cut = truncate(text, width)
    assert len(cut) <= width and cut.endswith("…")
    assert text.startswith(cut[:-1].rstrip())


@pytest.mark.parametrize("width", [16, 30, 44])
def test_wrap_keeps_every_character_and_fits(width):
    text = "out = rmsnorm(y) * norm_scale * sigmoid(x @ W_gate) @ Wo + a_very_long_name_here"
    lines = wrap(text, width)
    assert all(len(line) <= width for line in lines)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")
    assert all(line.startswith(CONTINUATION) for line in lines[1:])


def test_fit_compact_keeps_at_most_the_asked_lines():
    text = "W <- W - lr * (m / (1 - b1 ** step)) / (sqrt(v / (1 - b2 ** step)) + eps) + more + more"
    assert len(fit(text, 30, full=False, compact_lines=2)) == 2
    assert fit(text, 30, full=False, compact_lines=2)[-1].endswith("…")
    assert len(fit(text, 30, full=False, compact_lines=1)) == 1
    assert fit(text, 30, full=True) == wrap(text, 30)


def test_html_escapes():
    assert html("a < b & c -> d") == "a &lt; b &amp; c -&gt; d"


def _update(text: str):
    decl = parse(text)
    return decl, next(i for i in decl.levels[0].items)


def test_specialise_folds_constant_conditionals_only():
    decl, update = _update("optimizer o(lr = 0.1, flag = false) {\n"
                           "  level w every 1 step {\n"
                           "    W <- (W * 2 if flag else W) - lr * (grad(W) if step > 1 else W)\n"
                           "  }\n}\n")
    fixed: set[str] = set()
    folded = specialise(update.value, hparam_values(decl), fixed)
    assert format_expr(folded) == "W - lr * (grad(W) if step > 1 else W)"
    assert fixed == {"flag"}


def test_specialise_returns_the_same_node_when_nothing_folds():
    spec = nldsl.load("sgd")
    for level in spec.graph.levels.values():
        for update in level.updates:
            fixed: set[str] = set()
            if "if" not in format_expr(update.value):
                assert specialise(update.value, {}, fixed) is update.value
                assert fixed == set()
