"""check_derivations passes on stdlib specs and finds planted errors in the derivation table,
reporting a readable counterexample (the formula as nldsl prints it, values, both results)."""
import pytest

from nldsl.language import ast
from nldsl.checking import CheckFailure, check_derivations
from nldsl.lower import module as lower_module
from nldsl.lower import derive



pytestmark = pytest.mark.usefixtures("quick_shrinking")


SPECS = {
    "adam (ema closed forms)": ("adam", ["m: ema closed form", "v: ema closed form"]),
    "sgd (gd with step gates)": ("sgd", ["buf: gd closed form"]),
    "muon (ema; quintic not a gradient step)": ("muon", ["buf: ema closed form"]),
    "dgd (normalised rate, eq. 57)": ("dgd", ["W: dgd closed form"]),
    "linear attention (Hebbian)": ("linear_attention", ["M: gd closed form"]),
    "delta rule recurrence": ("examples/deltanet_recurrence.nl", ["M: gd closed form"]),
    "huber delta (autograd: rule only)": ("examples/huber_delta.nl",
                                          ["M: gd autograd (rule only: no closed form)"]),
}


@pytest.mark.parametrize("name, writes", SPECS.values(), ids=SPECS.keys())
def test_stdlib_derivations_pass(name, writes):
    report = check_derivations(name, examples=5)
    assert report.status == "pass" and report.examples == 5
    assert set(writes) <= set(report.checked)


MOMENTUM = """
module chunked_momentum(dim: int >= 1, heads = 2 >= 1, head_dim = 4 >= 1, lr = 0.1 > 0,
                        beta = 0.9 in [0, 1], decay = 1.0 in [0, 1]) {
  state Wk : [dim, heads * head_dim] = normal(0.02)
  state Wv : [dim, heads * head_dim] = normal(0.02)
  state Wo : [heads * head_dim, dim] = normal(0.02)
  level memory every 1 token chunk 2 heads heads {
    state M : [head_dim, head_dim] = 0
    key   k = l2norm(x @ Wk)
    value v = x @ Wv
    minimize l2(M(k), v) by momentum(lr = lr, beta = beta, decay = decay)
    read y = M(k)
  }
  out = y @ Wo
}
"""


def test_a_momentum_rule_under_chunk_2_checks_the_buffer_too(monkeypatch):
    """Titans eqs. 13-14: m <- beta m - lr G; S <- decay S + m, both compared. Planted: the
    buffer's beta dropped (m <- m - lr G); the drawn buffer m is not 0, so M shows it."""
    assert check_derivations(MOMENTUM, examples=5).checked == ["M: momentum closed form"]
    original = lower_module.ModuleWrite
    monkeypatch.setattr(lower_module, "ModuleWrite", lambda *a, **k: original(
        *a, **{**k, "beta": ast.Number(value=1)} if k.get("beta") is not None else k))
    with pytest.raises(CheckFailure, match=r"derived:   m <- 1 \* m - \(lr\) \* G; M <- "):
        check_derivations(MOMENTUM, examples=20)


CUBIC = """
optimizer cubic(lr = 0.1 >= 0, steps = 3 >= 1) {
  level weights every 1 step {
    W <- W - lr * O
  }
  level orthogonalize every 1 step {
    key g = grad(W)
    state O like W = g / (norm(g) + 1)
    O: minimize orthogonality(O) by newton_schulz(steps, "cubic")
  }
}
"""


def test_cubic_newton_schulz_is_steps_gradient_steps_from_the_restart(monkeypatch):
    """eq. 44: `steps` times O <- O - grad/4 from O's initial value. Planted: zeta 1/2."""
    report = check_derivations(CUBIC, examples=5)
    assert report.checked == ["O: newton_schulz cubic: GD steps, zeta = 1/4 (eq. 44)"]
    monkeypatch.setattr(derive, "num", lambda value: ast.Number(value=0.5 if value == 0.25 else value))
    with pytest.raises(CheckFailure, match=r"derived:   O <- O - 0\.5 \* \(2 \* "):
        check_derivations(CUBIC, examples=10)


def test_muon_lists_its_quintic_step_as_not_checked():
    report = check_derivations("muon", examples=2)
    assert "O: newton_schulz quintic polynomial (not a gradient step: not checked)" in report.checked


def test_a_spec_without_derived_rules_is_not_applicable():
    report = check_derivations("gated_deltanet", examples=2)
    assert report.status == "not applicable" and "no derived update rule" in report.reason


def test_an_unknown_level_is_a_clear_error():
    with pytest.raises(ValueError, match="sgd has no level 'nope'; it has"):
        check_derivations("sgd", level="nope", examples=1)


def test_a_forgotten_decay_in_the_gd_closed_form_is_found(monkeypatch):
    """Planted: gd_value drops the decay (S - lr G instead of decay S - lr G)."""
    original = derive.gd_value
    monkeypatch.setattr(derive, "gd_value", lambda state, grad, lr, decay, ema=False:
                        original(state, grad, lr, decay if ema else derive.num(1), ema))
    with pytest.raises(CheckFailure) as failure:
        check_derivations("sgd", examples=20)
    text = str(failure.value)
    assert text.startswith("sgd: the derived update of buf (level momentum, gd closed form)")
    assert "derived:   buf <- buf + (1 if step == 1 else 1 - dampening) * g" in text
    for line in ("largest difference", "hyper-parameters = {", "buf (before) = [",
                 "derived buf after the step = [", "autograd buf after the step = ["):
        assert line in text


def test_a_swapped_outer_product_in_the_delta_rule_is_found(monkeypatch):
    """Planted: the module's delta-rule gradient is outer(k, M k - v), not outer(M k - v, k)."""
    original = lower_module.closed_grad

    def swapped(loss, state, deep=False):
        grad = original(loss, state, deep)
        if isinstance(grad, ast.Call) and grad.func == "outer":
            return ast.Call(func="outer", args=grad.args[::-1])
        return grad

    monkeypatch.setattr(lower_module, "closed_grad", swapped)
    with pytest.raises(CheckFailure) as failure:
        check_derivations("examples/deltanet_recurrence.nl", examples=10)
    text = str(failure.value)
    assert "G = outer(k, M @ k - v)" in text
    assert "k = [" in text and "v = [" in text and "beta = [" in text


def test_a_missing_half_in_l2_is_found(monkeypatch):
    """Planted: l2's gradient taken as 2 (S k - v) k^T (the 1/2 of `l2` forgotten)."""
    original = lower_module.closed_grad
    monkeypatch.setattr(lower_module, "closed_grad", lambda loss, state, deep=False: ast.Binary(
        op="*", left=ast.Number(value=2), right=original(loss, state, deep)))
    with pytest.raises(CheckFailure, match=r"G = 2 \* outer\(M @ k - v, k\)"):
        check_derivations("deltanet", examples=10)


def test_a_clipped_layernorm_memory_clips_gamma_per_unit():
    """`clip` on a layernorm memory: the rule's definition clips gamma's gradient by its own
    unit's norm, as module/guard.py does (both took the norm over the whole batch; with the
    guard fixed alone the definition differed at a batch of 2)."""
    from test_module_snapshot_end import normed

    spec = normed("minimize l2(M(M(k)), v) by gd(lr = 0.1, decay = h, clip = 0.05)")
    report = check_derivations(spec, examples=10)
    assert report.status == "pass"
    assert report.checked == ["M: gd autograd (rule only: no closed form)"]


def test_newton_schulz_on_a_layernorm_memory_takes_gamma_per_unit():
    """`... then newton_schulz(2) then gd` on a layernorm memory: the rule's definition
    orthogonalises gamma as one row of its own unit, as runtime/chain.py does (both took a
    batch's gammas for one matrix)."""
    from test_module_snapshot_end import normed

    spec = normed("minimize l2(M(k), v) by momentum(lr = 1, beta = h) then newton_schulz(2) "
                  "then gd(lr = 0.1)")
    report = check_derivations(spec, examples=10)
    assert report.status == "pass"
    assert report.checked == [
        "M: momentum then newton_schulz then gd autograd (rule only: no closed form)"]
