"""The sequence-memory half of the standard library: every spec parses, says what it is, loads
(build + validate), and encodes the choices its header comment documents."""
from __future__ import annotations

from pathlib import Path

import pytest

import nldsl
from nldsl.language import ast
from nldsl.language.builtins import FUNCTIONS, RULES
from nldsl.library import description, stdlib_names, stdlib_text
from nldsl.language.parser import parse
from nldsl.language.printer import format_expr

MODULES = ["linear_attention", "deltanet", "gated_deltanet", "titans", "moneta", "yaad", "memora",
           "atlas", "cms", "cms_nested", "cms_independent", "self_modifying_titans", "hope",
           "hope_attention"]


def decl(name: str) -> ast.SpecDecl:
    return parse(stdlib_text(name), f"{name}.nl")


def level(spec: ast.SpecDecl, name: str) -> ast.Level:
    return next(lv for lv in spec.levels if lv.name == name)


def states(spec: ast.SpecDecl) -> dict[str, ast.State]:
    found = {i.name: i for i in spec.items if isinstance(i, ast.State)}
    for lv in spec.levels:
        found.update({i.name: i for i in lv.items if isinstance(i, ast.State)})
    return found


def objectives(lv: ast.Level) -> list[ast.Objective]:
    return [i for i in lv.items if isinstance(i, ast.Objective)]


def rule_chain(objective: ast.Objective) -> list[str]:
    return [rule.name for rule in objective.rules]


@pytest.mark.parametrize("name", MODULES)
def test_ships_with_the_package(name):
    assert name in stdlib_names()


@pytest.mark.parametrize("name", MODULES)
def test_parses_as_a_module_named_after_its_file(name):
    spec = decl(name)
    assert (spec.kind, spec.name) == ("module", name)
    assert "dim" in {h.name for h in spec.hparams}


@pytest.mark.parametrize("name", MODULES)
def test_header_comment_describes_it_and_cites_equations(name):
    text = stdlib_text(name)
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    assert text.startswith("# ")
    assert len(description(text)) > 20
    assert "eq" in "\n".join(header[1:]).lower()  # the equations it implements, with numbers


@pytest.mark.parametrize("name", MODULES)
def test_loads_through_build_and_validate(name):
    spec = nldsl.load(name)
    assert spec.name == name
    assert "outer" in spec.graph.levels
    assert [lv.name for lv in spec.decl.levels] == [n for n in spec.graph.levels if n != "outer"]


# ---- the algorithm each file encodes: the choices its header documents


@pytest.mark.parametrize("name, loss, chain", [
    ("linear_attention", "-dot(M(k), v)", ["gd"]),
    ("deltanet", "l2(M(k), v)", ["gd"]),
    ("titans", "l2(M(k), v)", ["momentum"]),
    ("moneta", "lp(W_st(k), v, bias_p)", ["gd"]),
    ("memora", "l2(W_st(k), v)", ["gd"]),
    ("atlas", "window(window_size, l2(M(k), v), gamma)", ["momentum", "newton_schulz", "gd"]),
], ids=lambda v: v if isinstance(v, str) and v.isidentifier() else None)
def test_memory_objective_and_rule(name, loss, chain):
    (objective,) = objectives(level(decl(name), "memory"))
    assert format_expr(objective.loss) == loss
    assert rule_chain(objective) == chain


def test_yaad_switches_from_l2_to_scaled_l1_beyond_delta():
    (objective,) = objectives(level(decl("yaad"), "memory"))
    loss = objective.loss
    assert isinstance(loss, ast.Conditional)
    assert format_expr(loss.then) == "l2(M(k), v)"
    assert format_expr(loss.cond) == "norm(M(k) - v) <= delta"
    assert format_expr(loss.otherwise) == "delta * lp(M(k), v, 1)"


def test_gated_deltanet_decays_the_erase_term_too():
    updates = [i for i in level(decl("gated_deltanet"), "memory").items if isinstance(i, ast.Update)]
    assert [(u.target, format_expr(u.value)) for u in updates] == [
        ("M", "alpha * M - beta * outer(alpha * M(k) - v, k)")]


@pytest.mark.parametrize("name", ["titans", "moneta", "yaad", "memora", "atlas"])
def test_chunked_per_head_memories_with_a_learned_initial_state(name):
    spec = decl(name)
    memory = level(spec, "memory")
    assert format_expr(memory.chunk) == "chunk_size"
    assert format_expr(memory.heads) == "heads"
    assert memory.backprop
    (state,) = [i for i in memory.items if isinstance(i, ast.State)]
    assert isinstance(state.init, ast.InitLearned)
    assert nldsl.load(name).graph.state(state.name).learned_by == "outer"


CMS_CHAINS = {
    # module: (levels slow to fast, the input each block reads, who learns each initial state)
    "cms": (["slow", "mid", "fast"], ["x", "h_slow", "h_mid"], ["outer", "outer", "outer"]),
    "cms_nested": (["slow", "mid", "fast"], ["x", "h_slow", "h_mid"], ["outer", "slow", "mid"]),
    "cms_independent": (["slow", "mid", "fast"], ["x", "x", "x"], ["outer", "outer", "outer"]),
    "hope": (["cms_slow", "cms_mid", "cms_fast"], ["o", "h_slow", "h_mid"],
             ["outer", "outer", "outer"]),
    "hope_attention": (["cms_slow", "cms_mid", "cms_fast"], ["o @ Wo", "h_slow", "h_mid"],
                       ["outer", "outer", "outer"]),
}


@pytest.mark.parametrize("name", sorted(CMS_CHAINS))
def test_cms_blocks_learn_from_the_task_at_nested_periods(name):
    names, inputs, teachers = CMS_CHAINS[name]
    spec = nldsl.load(name)
    periods = [spec.graph.levels[n].period for n in names]
    assert periods == [256, 64, 16]
    for level_name, block_input, teacher in zip(names, inputs, teachers):
        lv = level(spec.decl, level_name)
        (objective,) = objectives(lv)
        assert format_expr(objective.loss) == "task" and rule_chain(objective) == ["gd"]
        assert lv.backprop
        (read,) = [i for i in lv.items if isinstance(i, ast.Read)]
        (state,) = [i for i in lv.items if isinstance(i, ast.State)]
        assert format_expr(read.value) == f"{state.name}({block_input})"
        assert spec.graph.state(state.name).learned_by == teacher


def test_cms_independent_aggregates_with_a_learned_weighted_sum():
    spec = decl("cms_independent")
    (output,) = [i for i in spec.items if isinstance(i, ast.Output)]
    assert format_expr(output.value) == "wsum(mix, h_slow, h_mid, h_fast)"
    assert "mix" in {i.name for i in spec.items if isinstance(i, ast.State)}


SELF_MODIFYING = ["M_k", "M_v", "M_eta", "M_alpha", "M_memory"]


@pytest.mark.parametrize("name", ["self_modifying_titans", "hope"])
def test_self_modifying_memories_use_dgd_on_self_generated_values(name):
    spec = decl(name)
    found = states(spec)
    assert "M_q" not in found and "Wq" in found  # ambiguity 1: q is the fixed projection
    for memory in SELF_MODIFYING:
        assert isinstance(found[memory].shape, ast.MLPShape)
        assert found[memory].init == ast.InitLearned(by="outer")
    trained = {}
    for lv_name in ("projections", "memory"):
        for objective in objectives(level(spec, lv_name)):
            target = objective.state or "M_memory"
            trained[target] = (format_expr(objective.loss), rule_chain(objective), lv_name)
    assert sorted(trained) == sorted(SELF_MODIFYING)
    for memory, (loss, chain, lv_name) in trained.items():
        suffix = memory.removeprefix("M_")
        assert loss == f"l2({memory}(k), v_hat_{suffix})"
        assert chain == ["dgd"]
        assert (lv_name == "memory") == (memory == "M_memory")  # two chunk sizes, two levels
    memory_level = level(spec, "memory")
    (read,) = [i for i in memory_level.items if isinstance(i, ast.Read)]
    assert read.before_write  # eqs. 83 / 94 read M_memory,t-1
    assert format_expr(level(spec, "projections").chunk) == "chunk_projections"
    assert format_expr(memory_level.chunk) == "chunk_memory"


def test_hope_attention_reads_multi_head_softmax_attention():
    attend = level(decl("hope_attention"), "attend")
    (read,) = [i for i in attend.items if isinstance(i, ast.Read)]
    assert format_expr(read.value) == "attention(q, k, v)"
    assert format_expr(attend.heads) == "heads"
    assert not [i for i in attend.items if isinstance(i, ast.State)]


# ---- docs/language.md, the reference these specs are written against

LANGUAGE_DOC = Path(__file__).resolve().parents[1] / "docs" / "language.md"


@pytest.mark.parametrize("name", sorted(FUNCTIONS) + sorted(RULES))
def test_language_reference_documents_every_builtin(name):
    assert f"`{name}(" in LANGUAGE_DOC.read_text()


@pytest.mark.parametrize("construct", [
    "every N", "chunk C", "heads H", "backprop", "partial flush", "partial drop", "init learned by",
    "before write", "then", "<-", "out =", "wsum(", "task", "outer"])
def test_language_reference_explains_every_construct(construct):
    assert construct in LANGUAGE_DOC.read_text()
