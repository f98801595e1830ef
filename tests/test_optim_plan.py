"""Lowering a spec to a Plan: update order, folded bool/str hyper-parameters, states nothing
reads dropped, contexts and reads, restarted and accumulated states. Expected expressions are
the specs' own (nldsl/stdlib/*.nl) with the folded values substituted."""
import pytest

import nldsl
from nldsl.errors import NLDSLError
from nldsl.optim.plan import lower
from nldsl.language.printer import format_expr
from nldsl.spec import load


def plan(name, **folded):
    return lower(nldsl.load(name), folded)


def writes(p, level):
    return {w.target: format_expr(w.value) for lv in p.levels if lv.name == level for w in lv.writes}


@pytest.mark.parametrize("name, order", [
    pytest.param("adam", ["moments", "weights"], id="adam"),
    pytest.param("rmsprop", ["preconditioner", "momentum", "weights"], id="rmsprop"),
    pytest.param("muon", ["momentum", "orthogonalize", "weights"], id="muon"),
    pytest.param("m3", ["fast", "weights", "slow"], id="m3-slow-read-before-write"),
])
def test_levels_in_update_order(name, order):
    """A level that reads a value runs after the level writing it, unless it reads `before write`."""
    assert [lv.name for lv in plan(name).levels] == order


@pytest.mark.parametrize("folded, context", [
    pytest.param({}, "grad(W) + weight_decay * W", id="maximize-false"),
    pytest.param({"maximize": True}, "-grad(W) + weight_decay * W", id="maximize-true"),
])
def test_bool_hyperparameters_are_folded_into_the_expressions(folded, context):
    p = plan("sgd", **folded)
    (momentum,) = [lv for lv in p.levels if lv.name == "momentum"]
    assert format_expr(momentum.contexts["g"]) == context
    assert p.folded == {"nesterov": False, "maximize": False, **folded}
    assert p.hparams == ["lr", "momentum", "dampening", "weight_decay"]


@pytest.mark.parametrize("nesterov, read", [
    pytest.param(False, "g if momentum == 0 else buf", id="heavy-ball"),
    pytest.param(True, "g if momentum == 0 else g + momentum * buf", id="nesterov"),
])
def test_a_folded_conditional_keeps_its_numeric_branch(nesterov, read):
    (momentum,) = [lv for lv in plan("sgd", nesterov=nesterov).levels if lv.name == "momentum"]
    assert format_expr(momentum.reads["d"][0]) == read


def test_string_hyperparameters_are_folded():
    original, moonshot = plan("muon"), plan("muon", adjust_lr_fn="match_rms_adamw")
    scale = lambda p: format_expr([lv for lv in p.levels if lv.name == "weights"][0].contexts["scale"])
    assert scale(original) == "sqrt(max(1, size(W, 0) / size(W, 1)))"
    assert scale(moonshot) == "0.2 * sqrt(max(size(W, 0), size(W, 1)))"
    assert "adjust_lr_fn" not in moonshot.hparams


@pytest.mark.parametrize("name, folded, kept, dropped", [
    pytest.param("rmsprop", {}, {"v", "buf"}, {"gbar"}, id="rmsprop-uncentered-drops-gbar"),
    pytest.param("rmsprop", {"centered": True}, {"v", "gbar", "buf"}, set(), id="rmsprop-centered"),
    pytest.param("adam", {}, {"m", "v"}, {"vmax"}, id="adam-drops-vmax"),
    pytest.param("adam", {"amsgrad": True}, {"m", "v", "vmax"}, set(), id="adam-amsgrad"),
])
def test_states_nothing_reads_are_dropped_with_their_writes(name, folded, kept, dropped):
    p = plan(name, **folded)
    assert set(p.states) == kept | {"W"}
    assert not dropped & {w.target for lv in p.levels for w in lv.writes}


def test_contexts_writes_and_reads_of_a_level():
    p = plan("adam")
    moments = p.levels[0]
    assert {k: format_expr(v) for k, v in moments.contexts.items()} == {"g": "grad(W) + weight_decay * W"}
    assert writes(p, "moments") == {"m": "lerp(m, g, 1 - betas[0])",
                                    "v": "addcmul(v * betas[1], g, g, 1 - betas[1])"}
    assert p.level_of("g") is moments


def test_a_newton_schulz_state_restarts_each_step_and_is_not_stored():
    p = plan("muon")
    assert p.states["O"].persistent is False and p.states["buf"].persistent is True
    assert writes(p, "orthogonalize") == {"O": 'newton_schulz(u, ns_steps, ns_coefficients, eps, "bfloat16")'}


def test_a_slower_level_accumulates_its_trained_states_and_reads_before_its_write():
    p = plan("m3")
    slow = p.levels[-1]
    assert format_expr(slow.period) == "f"
    assert [(w.target, w.accumulate) for w in slow.writes] == [("M2", True)]
    assert slow.reads["O2"][1] is True                              # `read O2 = ... before write`
    assert not any(w.accumulate for lv in p.levels[:-1] for w in lv.writes)
    assert p.level_of("O2") is slow


def test_a_module_is_not_an_optimizer():
    with pytest.raises(nldsl.NLDSLError, match="is a module"):
        plan("titans")


def test_a_rule_with_clip_is_a_located_error():
    """`clip` guards module memories (docs/modules.md, "Stability"); an optimizer refuses it."""
    source = ("optimizer clipped(lr = 0.1 > 0) {\n  level weights every 1 step {\n"
              "    W <- W - lr * d\n  }\n  level m every 1 step {\n    key g = grad(W)\n"
              "    state buf like W = 0\n"
              "    buf: minimize -dot(buf, g) by gd(lr = 1, decay = 0.9, clip = 1.0)\n"
              "    read d = buf\n  }\n}\n")
    with pytest.raises(NLDSLError) as error:
        lower(load(source))
    text = str(error.value)
    assert ":8:" in text and "module memories only" in text


RESTARTED = """optimizer o(lr = 0.01 > 0) {{
  level orthogonal every 1 steps {{
    {context}
    state r like W = 0
    r: minimize dot(r, W) by newton_schulz(polynomial = "cubic")
    {after}
  }}
  level weights every 1 step {{
    {weights}
  }}
}}
"""


@pytest.mark.parametrize("context, after, weights, line", [
    pytest.param("key k = r", "read y = k", "W <- W - lr * y", 3, id="a-key"),
    pytest.param("read y = r before write", "", "W <- W - lr * y", 3, id="a-before-write-read"),
])
def test_a_restarted_state_read_before_its_write_is_a_located_error(context, after, weights,
                                                                    line):
    """Found by tests/test_fuzz_optim.py: the reference had no value for it (a KeyError) and the
    fused code an unbound local. newton_schulz restarts the state every step and does not keep
    it, so nothing computed before its write (contexts, before-write reads) can read it."""
    with pytest.raises(NLDSLError) as error:
        lower(load(RESTARTED.format(context=context, after=after, weights=weights)))
    text = str(error.value)
    assert f"<string>:{line}:" in text and "has no value before its write" in text


@pytest.mark.parametrize("after", [
    pytest.param("state x like W = 0\n    x <- W + r\n    read y = x", id="an-update-after"),
    pytest.param("read y = r", id="a-read-after")])
def test_a_restarted_state_read_after_its_write_compiles(after):
    p = lower(load(RESTARTED.format(context="", after=after, weights="W <- W - lr * y")))
    assert p.states["r"].persistent is False
