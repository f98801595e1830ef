"""module/guard.py: the guard `clip = c` (per-token gradient-norm clipping per weight matrix).

The deep chunk form folds the clip into the factors (||delta a^T||_F = ||delta|| ||a||); the
reference clips the explicit gradient. With the clip actually taken on part of the tokens (and
not on the others, asserted), the chunked schedule equals the reference in float64: outputs,
final states, gradients of x and of every parameter, odd T and a chunk that does not divide it
(tolerance: tests/test_module_deep_memories.py's `deep_bound`; the clipped step G c / ||G|| is
Lipschitz in G, so the bound's argument holds). The guard is also checked to bound each write
and to leave an unclipped write exactly as without it. A `layernorm` memory's gamma is clipped
as its own weight, per unit (it was clipped by its norm over the whole batch).
"""
from __future__ import annotations

import pytest
import torch

import nldsl.module.guard as guard
from _module_cases import assert_close, build, flat_layers, forbid_fallback, inputs
from nldsl.errors import NLDSLError
from nldsl.lower.program import MLPLayout
from nldsl.runtime.frame import Frame
from nldsl.runtime.mlp import layers as mlp_layers

from test_module_deep_memories import deep_bound


def clip_counts(monkeypatch) -> list:
    """Record, for every call of guard.scale, how many units it clipped and how many not."""
    seen, original = [], guard.scale

    def spy(norm, c):
        s = original(norm, c)
        seen.append(((s < 1).sum().item(), (s == 1).sum().item()))
        return s
    monkeypatch.setattr(guard, "scale", spy)
    return seen


def clipped_run(m, x, schedule: str, monkeypatch) -> tuple:
    """y, the final state by layer, the gradients of x and every parameter (0 where one does
    not reach y) and the parameter names of one schedule's run, the clip asserted taken on some
    tokens and not on others."""
    counts = clip_counts(monkeypatch)
    if schedule == "chunked":
        forbid_fallback(monkeypatch)
    y, state = m(x)
    loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum()
    params = [x] + list(m.parameters())
    grads = [torch.zeros_like(p) if g is None else g
             for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True))]
    clipped, kept = map(sum, zip(*counts))
    assert clipped > 0 and kept > 0, f"{schedule}: clipped {clipped}, kept {kept}"
    monkeypatch.undo()
    return y, flat_layers(state), grads, [n for n, _ in m.named_parameters()]


def assert_schedules_agree(results: dict, bound: float, what: str) -> None:
    (y_r, s_r, g_r, names), (y_c, s_c, g_c, _) = results["reference"], results["chunked"]
    assert_close(y_c, y_r, bound, f"{what} y")
    for key, value in s_r.items():
        if isinstance(value, torch.Tensor):
            assert_close(s_c[key], value, bound, f"{what} state {key}")
    for name, a, b in zip(["x"] + names, g_c, g_r):
        assert_close(a, b, 2 * bound, f"{what} grad {name}")


@pytest.mark.parametrize("spec, checkpoint", [
    pytest.param("titans", False, id="titans-momentum"),
    pytest.param("yaad", False, id="yaad-gd"),
    pytest.param("titans", True, id="titans-momentum-checkpoint")])
def test_chunked_equals_reference_with_the_clip_taken(spec, checkpoint, monkeypatch):
    """max_grad_norm 1.5: below some tokens' gradient norms and above others' (asserted)."""
    steps, chunk = 7, 3
    x = inputs(2, steps, 8, 4).requires_grad_()
    results = {}
    for schedule in ("reference", "chunked"):
        m = build(spec, schedule, heads=2, chunk_size=chunk, seed=4, max_grad_norm=1.5,
                  checkpoint=checkpoint and schedule == "chunked")
        results[schedule] = clipped_run(m, x, schedule, monkeypatch)
    assert_schedules_agree(results, deep_bound(steps, 16), spec)


def test_the_clip_changes_what_it_takes_and_nothing_else():
    """The same module with a bound below its gradients and one far above them: the first
    differs from the unguarded recurrence by O(1), the second equals it to the bit."""
    x = inputs(2, 7, 8, 4)
    with torch.no_grad():
        y = {c: build("titans", "reference", heads=2, chunk_size=3, seed=4,
                      max_grad_norm=c)(x)[0] for c in (1.5, 1e300)}
        free = build("titans", "reference", heads=2, chunk_size=3, seed=4,
                     max_grad_norm=float("inf"))(x)[0]
    assert torch.equal(y[1e300], free)
    assert (y[1.5] - free).abs().max() > 1e-3


def test_factors_clip_as_the_explicit_gradient():
    """clip_factors on delta, a equals clip_gradient on G = delta a^T per layer (float64),
    with a zero factor (norm 0: scale 1, no NaN) among the tokens."""
    g = torch.Generator().manual_seed(0)
    layout = MLPLayout((4, 6, 4), "gelu", True)
    deltas = [torch.randn(2, 3, 5, o, generator=g, dtype=torch.float64) for o, _ in layout.layers]
    ins = [torch.randn(2, 3, 5, i, generator=g, dtype=torch.float64) for _, i in layout.layers]
    deltas[0][0, 0, 0] = 0
    c = torch.full((2, 3, 5), 2.0, dtype=torch.float64)
    ours = guard.clip_factors(deltas, ins, c)
    full = torch.cat([(d.unsqueeze(-1) * a.unsqueeze(-2)).flatten(-2)
                      for d, a in zip(deltas, ins)], dim=-1)               # [B, H, L, P]
    theirs = guard.clip_gradient(Frame(3, 3), layout, full, c)
    mine = torch.cat([(d.unsqueeze(-1) * a.unsqueeze(-2)).flatten(-2)
                      for d, a in zip(ours, ins)], dim=-1)
    assert torch.isfinite(mine).all()
    assert_close(mine, theirs, 16 * torch.finfo(torch.float64).eps, "clipped factors")
    for d, a in zip(ours, ins):                                            # ||G^i_t|| <= c
        assert (d.norm(dim=-1) * a.norm(dim=-1) <= 2.0 * (1 + 1e-12)).all()


def test_a_zero_gradient_has_a_zero_outer_gradient():
    """The scale at a zero gradient is 1 with derivative 0: no NaN (torch's norm at 0)."""
    grad = torch.zeros(2, 3, 4, dtype=torch.float64, requires_grad=True)
    out = guard.clip_gradient(Frame(1), None, grad, 0.5)
    (gx,) = torch.autograd.grad(out.sum(), grad)
    assert torch.equal(gx, torch.ones_like(gx))


def test_a_clip_that_is_not_positive_is_rejected_at_check_time():
    from nldsl.module import compile as compile_module
    for bound in ("-1", "0"):
        source = open("nldsl/stdlib/yaad.nl").read().replace("clip = max_grad_norm",
                                                              f"clip = {bound}")
        with pytest.raises(NLDSLError) as error:
            compile_module(source, dim=8, heads=2, head_dim=4)
        assert "a gradient-norm bound that is not positive" in str(error.value), bound
        assert "clip > 0" in str(error.value)


#: The stdlib deep memories at tiny sizes with their step size at 100x its default (max_lr
#: 10; self_modifying_titans' eta_scale 10): far in their declared ranges (> 0) and where the
#: unguarded titans turns non-finite within 64 tokens (test below). The deep chunk form runs
#: titans and yaad (T 64, 4 chunks); the others run the token loop (T 24 or 8, chunks of 4). The
#: 4096-token measurements are benchmarks/bench_stability.py's (docs/modules.md, "Stability").
STRESSED = {
    "titans": (64, dict(dim=8, heads=2, head_dim=4, chunk_size=16, max_lr=10)),
    "yaad": (64, dict(dim=8, heads=2, head_dim=4, chunk_size=16, max_lr=10)),
    "moneta": (24, dict(dim=8, heads=2, head_dim=4, chunk_size=4, max_lr=10)),
    "memora": (24, dict(dim=8, heads=2, head_dim=4, chunk_size=4, max_lr=10)),
    "self_modifying_titans": (8, dict(dim=8, chunk_memory=4, chunk_projections=4,
                                       eta_scale=10)),
}


def run_stressed(spec: str, autocast: bool, **overrides):
    """Default initialisation (seed 0), x ~ N(0, 1); y, every fast state tensor, and the
    gradient of mean(y^2) for every parameter."""
    from nldsl.module import compile as compile_module
    steps, hparams = STRESSED[spec]
    torch.manual_seed(0)
    m = compile_module(spec, **{**hparams, **overrides})
    x = torch.randn(1, steps, hparams["dim"])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y, state = m(x)
        loss = y.float().square().mean()
    loss.backward()
    states = [w for level, own in state.items() if level != "_stream" for value in own.values()
              for w in (value if isinstance(value, tuple) else (value,))]
    return y, states, {n: p.grad for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("autocast", [pytest.param(False, id="float32"),
                                      pytest.param(True, id="bfloat16-autocast")])
@pytest.mark.parametrize("spec", list(STRESSED))
def test_every_deep_memory_stays_finite_under_a_large_step(spec, autocast):
    y, states, grads = run_stressed(spec, autocast)
    assert torch.isfinite(y).all(), "y"
    assert all(torch.isfinite(s).all() for s in states), "fast state"
    assert all(s.dtype == torch.float32 for s in states), "fast state kept in float32"
    assert grads and all(torch.isfinite(g).all() for g in grads.values()), \
        [n for n, g in grads.items() if not torch.isfinite(g).all()]


def test_the_guard_is_what_keeps_titans_finite():
    """Without it (max_grad_norm = inf: never clips) the same stressed titans overflows."""
    y, states, _ = run_stressed("titans", False, max_grad_norm=float("inf"))
    assert not torch.isfinite(y).all()


def test_moneta_from_a_zero_dual_state_has_finite_gradients():
    """Moneta's learned dual state: the outer gradients of its initial weights are finite and
    not all zero (the matrix memory's plain ||A||_q^{q-2} gave NaN at A = 0)."""
    _, _, grads = run_stressed("moneta", False, max_lr=0.1)
    assert torch.isfinite(grads["A_init_w1"]).all() and grads["A_init_w1"].abs().max() > 0


def test_applications_clip_as_the_explicit_gradient():
    """clip_applications on three applications' factors equals clip_gradient on their summed
    G = sum_p delta_p a_p^T per layer (float64), with a token whose gradient is 0 (scale 1, and
    a finite outer gradient through the Gram norm's floor)."""
    g = torch.Generator().manual_seed(1)
    layout = MLPLayout((4, 6, 4), "gelu", True)
    apps = [[(torch.randn(2, 5, i, generator=g, dtype=torch.float64),
              torch.randn(2, 5, o, generator=g, dtype=torch.float64, requires_grad=True))
             for o, i in layout.layers] for _ in range(3)]
    with torch.no_grad():
        for pairs in apps:
            pairs[0][1][0, 0] = 0                   # token 0 of sequence 0: G^1 = 0
    c = torch.full((2, 5), 2.0, dtype=torch.float64)
    ours = guard.clip_applications(apps, c)
    summed = lambda pairs_of: torch.cat([sum(d.unsqueeze(-1) * a.unsqueeze(-2) for a, d in layer)
                                         .flatten(-2) for layer in zip(*pairs_of)], dim=-1)
    theirs = guard.clip_gradient(Frame(2), layout, summed(apps), c)       # [B, L, P]
    mine = summed(ours)
    assert_close(mine, theirs.detach(), 64 * torch.finfo(torch.float64).eps, "clipped factors")
    (grad,) = torch.autograd.grad(mine.sum(), apps[0][0][1])
    assert torch.isfinite(grad).all()


SMT_MOMENTUM = "examples/self_modifying_titans_momentum.nl"


@pytest.mark.parametrize("source, last_hparam", [
    pytest.param("self_modifying_titans", "eta_scale = 1e-3 > 0", id="dgd"),
    pytest.param(SMT_MOMENTUM, "beta = 0.9 >= 0", id="momentum-then-dgd"),
])
def test_snapshot_form_equals_reference_with_the_clip_taken(source, last_hparam, tmp_path,
                                                            monkeypatch):
    """self_modifying_titans with `clip = max_grad_norm` on its four preconditioned writes and
    the memory's (the snapshot form: a token's gradient sums several applications of M, so the
    norm comes from the factors' Gram matrices), and its momentum variant (the clip comes before
    the chain's momentum, module/snapshot_chain.py). At max_grad_norm 5 some tokens clip and
    some do not (asserted); without the guard these O(1) parameters blow the memories up (norms
    to 1e17 within 11 tokens)."""
    from pathlib import Path

    from nldsl.library import stdlib_text
    from _module_cases import randomize
    from nldsl.lower.snapshot_forms import SnapshotForm
    from nldsl.module import compile as compile_module

    root = Path(__file__).resolve().parent.parent
    original = (root / source).read_text() if source.endswith(".nl") else stdlib_text(source)
    text = original.replace(
        "precondition = true)", "precondition = true, clip = max_grad_norm)").replace(
        f"{last_hparam}) {{", f"{last_hparam}, max_grad_norm = 1 > 0) {{")
    code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert sum("clip = max_grad_norm" in line for line in code) == 5
    spec = tmp_path / "smt_clip.nl"
    spec.write_text(text)
    steps = 11
    x = inputs(2, steps, 8, 1).requires_grad_()
    results = {}
    for schedule in ("reference", "chunked"):
        torch.manual_seed(1)
        m = randomize(compile_module(str(spec), schedule=schedule, chunk_memory=4,
                                     chunk_projections=3, dim=8, eta_scale=0.5,
                                     max_grad_norm=5.0).to(torch.float64), 1)
        if schedule == "chunked":
            assert all(isinstance(f, SnapshotForm) for f in m.fast_paths.values())
            assert set(m.fast_paths) == {"projections", "memory"}
        results[schedule] = clipped_run(m, x, schedule, monkeypatch)
    assert_schedules_agree(results, deep_bound(steps, 16), source)


NORMED = MLPLayout((3, 5, 3), "silu", False, norm=True)


def test_a_layernorm_gamma_is_clipped_per_unit():
    """clip_gradient on a batch of two units equals it on each alone (gamma's norm is its own
    unit's: it was the batch's), and every part ends at norm <= c, gamma's included."""
    g = torch.Generator().manual_seed(2)
    grad = torch.randn(2, NORMED.size, generator=g, dtype=torch.float64)
    grad[1] *= 10                                     # the second unit clips, the first not
    c = torch.full((2,), 4.0, dtype=torch.float64)
    both = guard.clip_gradient(Frame(1), NORMED, grad, c)
    alone = torch.cat([guard.clip_gradient(Frame(1), NORMED, grad[i:i + 1], c[i:i + 1])
                       for i in range(2)])
    assert torch.equal(both, alone)
    gamma = lambda flat: mlp_layers(NORMED, flat)[-1]                        # [B, d_L]
    assert torch.equal(gamma(both)[0], gamma(grad)[0])
    for part, shape in zip(mlp_layers(NORMED, both), NORMED.parts):
        norms = torch.linalg.vector_norm(part, dim=tuple(range(-len(shape), 0)))
        assert (norms <= 4.0 * (1 + 1e-12)).all(), shape


def test_applications_clip_a_layernorm_gamma_as_the_explicit_gradient():
    """clip_applications with gamma's pairs (LN(z_L), delta) past the layers: G_gamma =
    sum_p delta_p o LN(z_L)_p, clipped by its own norm, equals clip_gradient on the summed
    gradient (float64)."""
    g = torch.Generator().manual_seed(3)
    parts = NORMED.layers + ((NORMED.widths[-1], NORMED.widths[-1]),)
    apps = [[(torch.randn(2, 5, i, generator=g, dtype=torch.float64),
              torch.randn(2, 5, o, generator=g, dtype=torch.float64)) for o, i in parts]
            for _ in range(2)]
    c = torch.full((2, 5), 1.5, dtype=torch.float64)
    depth = len(NORMED.layers)
    ours = guard.clip_applications(apps, c, depth)

    def summed(pairs_of):                                                 # [B, L, P]
        layers = [sum(d.unsqueeze(-1) * a.unsqueeze(-2) for a, d in layer).flatten(-2)
                  for layer in list(zip(*pairs_of))[:depth]]
        return torch.cat(layers + [sum(d * a for a, d in list(zip(*pairs_of))[depth])], dim=-1)
    theirs = guard.clip_gradient(Frame(2), NORMED, summed(apps), c)
    assert not torch.equal(theirs, summed(apps))                          # some token clips
    assert_close(summed(ours), theirs, 64 * torch.finfo(torch.float64).eps, "clipped factors")


def test_snapshot_form_clips_a_layernorm_memory_as_the_reference(monkeypatch):
    """A layernorm memory's clipped write in the snapshot form (tests/test_fuzz_deep.py FOUND
    "layernorm-snapshot-clip"), two applications (the Gram norms) and a chain: the clip taken
    on some tokens and not on others (asserted) in both schedules."""
    from nldsl.module import compile as compile_module
    from test_module_snapshot_end import normed

    steps = 7
    x = inputs(2, steps, 3, 3).requires_grad_()
    for body in ("minimize l2(M(M(k)), v) by gd(lr = 0.3, decay = h, clip = 2.5)",
                 "minimize l2(M(k), v) by ema(h) then gd(lr = 0.3, clip = 2.5)"):
        results = {}
        for schedule in ("reference", "chunked"):
            torch.manual_seed(1)
            m = compile_module(normed(body), schedule=schedule).to(torch.float64)
            results[schedule] = clipped_run(m, x, schedule, monkeypatch)
        assert_schedules_agree(results, deep_bound(steps, 6), body)
