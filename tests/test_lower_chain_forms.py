"""lower/chain_forms.py: which levels take the chain chunk form, recognised by structure.

Atlas and its edits with the same structure take it (module/chain_chunk.py computes it, tested
in tests/test_module_chain_chunk.py); what the form cannot compute exactly is refused, so the
level runs the reference.
"""
from __future__ import annotations

import pytest

from nldsl.lower.chain_forms import ChainForm, chain_form
from nldsl.lower.module import lower_module
from nldsl.module.checks import resolve_hparams
from nldsl.spec import load

SOURCE = open("nldsl/stdlib/atlas.nl").read()
RULE = "by momentum(lr = 1, beta = theta) then newton_schulz(ns_steps) then gd(lr = eta, " \
       "decay = alpha)"
OBJECTIVE = "minimize window(window_size, l2(M(k), v), gamma)"


def form(source: str) -> ChainForm | None:
    spec = load(source)
    program = lower_module(spec, resolve_hparams(spec, {"dim": 8, "heads": 2, "head_dim": 4}))
    return chain_form(program.levels[0], program)


def test_atlas_takes_the_form():
    found = form(SOURCE)
    assert found.transform.rule == "momentum" and found.newton_schulz is not None
    assert found.width.id == "window_size" and found.gamma.id == "gamma"
    assert found.deep.lr.id == "eta" and found.deep.decay.id == "alpha"
    assert "window" not in str(found.deep.loss)          # the window's inner loss


def test_the_polynomial_example_takes_the_form():
    assert form(open("examples/atlas_polynomial.nl").read()) is not None


@pytest.mark.parametrize("edits", [
    pytest.param({RULE: "by momentum(lr = 1, beta = theta) then ema(beta = theta) then "
                  "newton_schulz(ns_steps) then gd(lr = eta, decay = alpha)"},
                 id="two-transforms"),
    pytest.param({RULE: "by newton_schulz(ns_steps) then momentum(lr = 1, beta = theta) then "
                  "gd(lr = eta, decay = alpha)"}, id="newton-schulz-first"),
    pytest.param({OBJECTIVE: "minimize 2 * window(window_size, l2(M(k), v), gamma)"},
                 id="window-inside-a-loss"),
    pytest.param({OBJECTIVE: "minimize l2(M(k), v)", RULE: "by gd(lr = eta, decay = alpha)"},
                 id="plain-gd-is-the-deep-form"),
    pytest.param({"gate  gamma = sigmoid(x @ W_gamma)": "gate  gamma = sigmoid(mean(M(k)))"},
                 id="gamma-reads-the-state"),
])
def test_what_the_form_cannot_compute_is_refused(edits):
    source = SOURCE
    for old, new in edits.items():
        assert old in source
        source = source.replace(old, new)
    assert form(source) is None     # (an edit the front end rejected would raise here)
