"""Every optimizer spec of the standard library parses, builds, validates and says what it is."""
import pytest

import nldsl
from nldsl.library import description, stdlib_text
from nldsl.language.parser import parse

OPTIMIZERS = ["sgd", "momentum", "adam", "adamw", "adagrad", "rmsprop", "muon", "dgd",
              "delta_momentum", "dmgd", "m3"]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_spec_parses_as_an_optimizer(name):
    decl = parse(stdlib_text(name), f"{name}.nl")
    assert decl.kind == "optimizer" and decl.name == name


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_spec_loads_with_a_level_graph(name):
    spec = nldsl.load(name)
    assert spec.graph.levels
    assert set(spec.graph.update_order()) == set(spec.graph.levels)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_spec_has_a_one_line_description(name):
    assert len(description(stdlib_text(name))) > 20


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_spec_writes_the_parameters(name):
    decl = nldsl.load(name).decl
    targets = {u.target for level in decl.levels for u in level.items if u.kind == "update"}
    objective_states = {o.state for level in decl.levels for o in level.items if o.kind == "objective"}
    assert "W" in targets | objective_states
