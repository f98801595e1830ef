"""lower/periodic_forms.py: which `once` levels take the periodic form, by structure (the
stdlib's titans_pytorch specs and a user spec under other names do; a matrix memory, a read of
the chunk's snapshot, a gate that reads the memory, a level without `once` do not)."""
from __future__ import annotations

import pytest

import nldsl
from nldsl.lower.periodic_forms import PeriodicForm, periodic_form

SPEC = """module periodic_probe(dim: int >= 1) {{
  state Wk : [dim, 2 * 3] = normal(0.5)
  state W_lr : [dim, 2] = normal(0.5)
  level memory every 4 tokens heads 2 backprop partial drop {once} {{
    state M : {memory}
    key   k = x @ Wk
    gate  rate = {rate}
    minimize l2(M(k), k) by gd(lr = rate, decay = 0.9)
    read y = {read}
  }}
  out = y @ transpose(Wk)
}}"""
USER = dict(once="once", memory="mlp(3 -> 6 -> 3, gelu, layernorm) init learned",
            rate="sigmoid(period_mean(x @ W_lr))", read="M(k)")


def form(spec: str, **hparams):
    program = nldsl.compile(spec, schedule="reference", **hparams).program
    return periodic_form(program.levels[0], program)


@pytest.mark.parametrize("spec, hparams", [
    pytest.param("titans_pytorch", dict(dim=8, heads=2, head_dim=4, chunk_size=3), id="stdlib"),
    pytest.param("titans_pytorch", dict(dim=8, heads=2, head_dim=4, chunk_size=3,
                                        batch_size=6), id="stdlib-batch"),
    pytest.param("titans_pytorch_single_head", dict(dim=8, chunk_size=2), id="stdlib-one-head"),
    pytest.param(SPEC.format(**USER), dict(dim=8), id="user"),
])
def test_the_form_is_recognised(spec, hparams):
    found = form(spec, **hparams)
    assert isinstance(found, PeriodicForm)
    assert found.state == "M" and len(found.queries) == 1


@pytest.mark.parametrize("change", [
    pytest.param(dict(memory="[3, 3] = 0"), id="matrix-memory"),
    pytest.param(dict(read="M(k) before write"), id="read-before-write"),
    pytest.param(dict(rate="sigmoid(sum(M(k)))"), id="gate-reads-the-memory"),
    pytest.param(dict(once=""), id="not-once"),
])
def test_other_structures_are_not_the_form(change):
    assert form(SPEC.format(**{**USER, **change}), dim=8) is None
