"""Every label of the syntax-error catalogue is reachable: each of its snippets fails to parse
with exactly that label's message and hint, located inside the snippet."""
from __future__ import annotations

import pytest

from nldsl.errors import NLDSLSyntaxError
from nldsl.language.parser import parse
from nldsl.language.syntax_catalogue import ACCEPTED_LABELS, CARET, SYNTAX_ERRORS, TOKEN_LABELS

CASES = [pytest.param(message, hint, snippet, id=f"{message[:40]}-{i}")
         for (message, hint), snippets in SYNTAX_ERRORS.items()
         for i, snippet in enumerate(snippets)]
MESSAGES = {message for message, _ in SYNTAX_ERRORS}


@pytest.mark.parametrize("message, hint, snippet", CASES)
def test_snippet_raises_its_label(message, hint, snippet):
    with pytest.raises(NLDSLSyntaxError) as caught:
        parse(snippet)
    problem = caught.value.problems[0]
    assert (problem.message, problem.hint) == (message, hint)
    lines = snippet.splitlines()
    assert 1 <= problem.line <= len(lines)
    assert 1 <= problem.col <= len(lines[problem.line - 1]) + 1


@pytest.mark.parametrize("table", [CARET, ACCEPTED_LABELS.values(), TOKEN_LABELS.values()],
                         ids=["caret", "accepted", "token"])
def test_tables_name_catalogue_labels(table):
    assert set(table) <= MESSAGES


@pytest.mark.parametrize("text, line, col", [
    pytest.param("optimizer o() {\n level a every 1 step {\n  W <- f(g(W)\n }\n}", 3, 9,
                 id="unclosed-paren-points-at-the-open-one"),
    pytest.param("optimizer o() {\n level a every 1 step {\n  W <- W\n }\n", 1, 15,
                 id="unclosed-brace-points-at-the-open-one"),
    pytest.param("module m(dim) {\n level a every 1 token {\n  state M : [dim, dim]\n"
                 "  minimize l2(M(x), x)  # no rule\n }\n}", 4, 23,
                 id="missing-by-points-after-the-loss"),
    pytest.param("optimizer o() {\n level a every 1 step {\n  W <- W - 2 lr\n }\n}", 3, 14,
                 id="juxtaposed-points-at-the-second-expression"),
])
def test_caret_placement(text, line, col):
    with pytest.raises(NLDSLSyntaxError) as caught:
        parse(text)
    problem = caught.value.problems[0]
    assert (problem.line, problem.col) == (line, col)
