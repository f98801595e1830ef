"""Corrupted spec texts either load or raise a located `NLDSLError`: never another exception,
never a hang. Seeds are every stdlib spec plus the hand-written examples in nldsl.testing."""
from __future__ import annotations


import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nldsl
from nldsl.library import stdlib_names, stdlib_text
from nldsl.testing import EXAMPLE_SPECS, corrupted_texts, hang_guard, tokenize

SEEDS = {f"stdlib-{name}": stdlib_text(name) for name in stdlib_names()}
SEEDS.update({f"example-{name}": text for name, text in EXAMPLE_SPECS.items()})

# About 2000 corrupted inputs in all, however many seeds there are, so the file stays < 60 s.
EXAMPLES_PER_SEED = max(15, 2000 // len(SEEDS))
HANG_LIMIT_S = 10

FUZZ = settings(max_examples=EXAMPLES_PER_SEED, deadline=2000, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def load_or_located_error(text: str) -> None:
    # A trailing newline makes `load` read the argument as spec text, never as a name or path.
    text = text if text.endswith("\n") else text + "\n"
    try:
        with hang_guard(HANG_LIMIT_S):
            nldsl.load(text)
    except nldsl.NLDSLError as err:
        assert err.line >= 1 and err.column >= 1, str(err)
        assert f"<string>:{err.line}:{err.column}: error:" in str(err)


@pytest.mark.parametrize("text", [pytest.param(text, id=name) for name, text in SEEDS.items()])
def test_seed_tokenizes_losslessly(text):
    assert "".join(tokenize(text)) == text


@pytest.mark.parametrize("name", list(SEEDS))
@FUZZ
@given(data=st.data())
def test_corrupted_spec_loads_or_fails_with_location(name, data):
    load_or_located_error(data.draw(corrupted_texts(SEEDS[name]), label="text"))


@pytest.mark.parametrize("text", [
    pytest.param("", id="empty"),
    pytest.param("   \n\n", id="blank"),
    pytest.param("optimizer", id="keyword-only"),
    pytest.param('optimizer o(m = "unclosed) { }', id="unclosed-string"),
    pytest.param("optimizer o() { W <- W $ 2 }", id="stray-character"),
    pytest.param("optimizer o() {" + " level a every 1 step {" * 200, id="deep-unclosed-nesting"),
    pytest.param("optimizer o() { W <- " + "(" * 300 + "W" + ")" * 300 + " }",
                 id="deep-parentheses"),
    pytest.param("optimizer o() { W <- " + "- " * 1000 + "W }", id="long-unary-chain"),
    pytest.param("optimizer o() { W <- " + "f(" * 300 + "W" + ")" * 300 + " }",
                 id="deep-call-nesting"),
    pytest.param("optimizer o() { W <- " + " ** ".join(["W"] * 1000) + " }", id="long-power-chain"),
])
def test_hand_picked_bad_texts(text):
    load_or_located_error(text)
