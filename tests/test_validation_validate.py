"""validate(): every check runs, problems come back all at once, sorted and without repeats;
valid specs (the standard library and the examples) have no problems at all."""
from __future__ import annotations

import pytest

from nldsl.build import build
from nldsl.errors import NLDSLValidationError, Source
from nldsl.library import stdlib_names, stdlib_text
from nldsl.language.parser import parse
from nldsl.testing import EXAMPLE_SPECS
from nldsl.validation.validate import CHECKS, problems, validate

VALID = {f"stdlib-{n}": stdlib_text(n) for n in stdlib_names()}
VALID.update({f"example-{n}": t for n, t in EXAMPLE_SPECS.items()})


def found(text: str):
    return problems(build(parse(text)), Source(text, "spec.nl"))


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_specs_have_no_problems(name):
    assert [p.format() for p in found(VALID[name])] == []


def test_validate_returns_the_same_graph():
    text = EXAMPLE_SPECS["heavy_ball"]
    graph = build(parse(text))
    assert validate(graph, Source(text)) is graph


SEVERAL = """optimizer o(lr = -1 > 0) {
  level a every 1 step {
    W <- W - lr * zz + yy
  }
  level a every 1 token { }
}
"""


def test_all_problems_in_source_order():
    with pytest.raises(NLDSLValidationError) as caught:
        validate(build(parse(SEVERAL)), Source(SEVERAL, "spec.nl"))
    got = [(p.line, p.col, p.message) for p in caught.value.problems]
    assert got == sorted(got, key=lambda p: p[:2])
    assert [m for _, _, m in got] == [
        "the default of 'lr' (-1) is outside its declared range (> 0)",
        "unknown name 'zz'",
        "unknown name 'yy'",
        "level 'a' is defined twice",
    ]


def test_repeated_problems_are_reported_once():
    text = "optimizer o() {\n level a every 1 step { W <- W - q }\n}"
    # check_references and any later check may see the same name: one problem per place
    assert len(found(text)) == 1


def test_every_check_is_a_function_of_a_checker():
    assert len(CHECKS) == len(set(CHECKS)) >= 9
    assert all(callable(check) for check in CHECKS)
