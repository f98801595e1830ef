"""Issue 9 §3: the `chunked` schedule equals the `reference` one, in float64, for outputs, final
states (conv caches and the token count included) and gradients with respect to x and every
parameter; the block size never changes a value beyond rounding.

Every spec here must actually take the fast path (asserted first): a chunked module that fell
back to the reference would pass the comparison trivially.

Tolerances: `_module_cases.rounding_bound` derives them from the arithmetic (two float64
evaluations of a norm-<=1 recurrence that associate their sums differently).
"""
from __future__ import annotations

import pytest
import torch

from _module_cases import SPECS, assert_close, build, flat_state, forbid_fallback, inputs, \
    rounding_bound

#: (spec, T, B, heads, block sizes). Blocks that divide T, that do not, block 1, and blocks
#: longer than T; heads 1 (the frame's unsplit special case), 2 and 3. T = 256 only for the
#: two full layers, the reference being a Python loop over tokens.
CASES = [
    (spec, 1, 1, 2, (1, 16)) for spec in SPECS
] + [
    (spec, 63, 3, 3, (16, 63, 64)) for spec in SPECS
] + [
    (spec, 100, 1, 2, (25, 64)) for spec in SPECS
] + [
    ("linear_attention", 100, 3, 1, (7, 100)),
    ("deltanet_recurrence", 100, 3, 1, (1, 32)),
    ("gated_deltanet", 63, 1, 1, (16,)),
    ("gated_deltanet_recurrence", 63, 3, 1, (10,)),
    ("deltanet", 256, 3, 2, (64, 48)),
    ("gated_deltanet", 256, 3, 2, (64, 96)),
]

_reference: dict = {}


def _run(module, x, seed):
    """(y, final state, {"x": dL/dx, name: dL/dparam}) for L = <y, r> + sum <state, r_s>: the
    final state enters the loss too, so its gradient path (used when a stream is trained
    across segments) is compared as well."""
    x = x.clone().requires_grad_(True)
    y, state = module(x)
    generator = torch.Generator().manual_seed(7 + seed)
    loss = (y * torch.randn(y.shape, generator=generator, dtype=y.dtype)).sum()
    for value in flat_state(state).values():
        if isinstance(value, torch.Tensor) and value.requires_grad:
            loss = loss + (value * torch.randn(value.shape, generator=generator,
                                               dtype=value.dtype)).sum()
    names = [n for n, _ in module.named_parameters()]
    grads = torch.autograd.grad(loss, [x] + [p for _, p in module.named_parameters()],
                                allow_unused=True)
    out = {"x": grads[0]}
    for name, g, (_, p) in zip(names, grads[1:], module.named_parameters()):
        out[name] = torch.zeros_like(p) if g is None else g
    return y.detach(), {k: (v.detach() if isinstance(v, torch.Tensor) else v)
                        for k, v in flat_state(state).items()}, out


def reference(spec, steps, batch, heads):
    key = (spec, steps, batch, heads)
    if key not in _reference:
        module = build(spec, "reference", heads=heads)
        _reference[key] = _run(module, inputs(batch, steps, module.program.dim, 0), 0)
    return _reference[key]


def _width(spec, heads):
    hparams = SPECS[spec][1]
    return max(hparams.get("head_dim", 1), hparams.get("head_v_dim", 1))


RUNS = [(spec, steps, batch, heads, block) for spec, steps, batch, heads, blocks in CASES
        for block in blocks]


def _run_id(run):
    spec, steps, batch, heads, block = run
    divides = "divides" if steps % block == 0 else "ragged"
    return f"{spec}-T{steps}-B{batch}-H{heads}-block{block}-{divides}"


@pytest.mark.parametrize("run", RUNS, ids=_run_id)
def test_chunked_equals_reference(run, monkeypatch):
    spec, steps, batch, heads, block_size = run
    module = build(spec, "chunked", block_size=block_size, heads=heads)
    assert module.fast_paths, f"{spec} must take the fast path, or this test proves nothing"
    y_ref, state_ref, grads_ref = reference(spec, steps, batch, heads)
    forbid_fallback(monkeypatch)
    y, state, grads = _run(module, inputs(batch, steps, module.program.dim, 0), 0)
    width = _width(spec, heads)
    bound = rounding_bound(steps, width, block_size)
    assert_close(y, y_ref, bound, "y")
    assert state.keys() == state_ref.keys()
    for name, value in state_ref.items():
        if isinstance(value, torch.Tensor):
            assert_close(state[name], value, bound, f"state {name}")
        else:
            assert state[name] == value, name
    assert grads.keys() == grads_ref.keys()
    # Gradients are compared at the run's largest gradient magnitude: backward rounding errors
    # enter through the cotangents of the shared recurrence, and a parameter's gradient can be
    # a cancellation of such terms (T = 1 DeltaNet: rmsnorm(M q) = rmsnorm(beta (k.q) v) does
    # not depend on the scale of k.q except through the norm's eps, so dL/dq_conv is an
    # O(eps) remainder of O(1) terms).
    scale = max(g.abs().max().item() for g in grads_ref.values())
    for name, g in grads_ref.items():
        # (at T = 1 the decay multiplies M_0 = 0, so A_log, dt_bias, W_a get no gradient)
        assert steps == 1 or g.abs().max() > 0, f"d loss / d {name} is zero: untested"
        error = (grads[name] - g).abs().max().item()
        bound_g = rounding_bound(steps, width, block_size, passes=3)
        assert error <= bound_g * scale, \
            f"d loss / d {name}: max error {error:.3e} > {bound_g:.3e} x scale {scale:.3e}"


@pytest.mark.parametrize("spec", list(SPECS))
def test_block_size_never_changes_a_value(spec, monkeypatch):
    """Chunked with block sizes 1 (one token per block: the WY form degenerates to the token
    recurrence), 5, 40 (= T) and 128 (> T, one padded block) on the same input: equal to each
    other within the rounding bound of the largest block."""
    steps, batch = 40, 2
    forbid_fallback(monkeypatch)
    runs = {}
    for block_size in (1, 5, 40, 128):
        module = build(spec, "chunked", block_size=block_size, heads=2)
        assert module.fast_paths
        runs[block_size] = module(inputs(batch, steps, module.program.dim, 3))
    y1, s1 = runs[1]
    bound = rounding_bound(steps, _width(spec, 2), 128)
    for block_size, (y, state) in runs.items():
        assert_close(y, y1, bound, f"y, block {block_size} vs 1")
        for name, value in flat_state(s1).items():
            if isinstance(value, torch.Tensor):
                assert_close(flat_state(state)[name], value, bound, f"{name}, block {block_size}")


def test_rounding_bound_is_not_vacuous():
    """The bound used above is far below the size of a plausible bug: at T = 256, block 96,
    width 5 it is below 1e-9 (relative), while a decay applied one token late changes a
    Gated DeltaNet output by O(1 - alpha) ~ 1e-1."""
    assert rounding_bound(256, 5, 96, passes=3) < 1e-9


def test_a_wrong_decay_is_caught():
    """The comparison detects a real difference: the same module with one A_log entry moved
    by 1e-3 differs from the reference by far more than the bound."""
    steps, batch = 63, 1
    y_ref, _, _ = reference("gated_deltanet", steps, batch, 3)
    module = build("gated_deltanet", "chunked", block_size=16, heads=3)
    with torch.no_grad():
        module.A_log[0] += 1e-3
    y, _ = module(inputs(batch, steps, module.program.dim, 0))
    error = (y - y_ref).abs().max() / y_ref.abs().max()
    assert error > 1e3 * rounding_bound(steps, 5, 16)


# -- user-written specs: the form is recognised by structure, not by name ---------------------

_USER = '''module my_memory(dim: int >= 1, nh = 2 >= 1, width = 4 >= 1, eta = 0.3 > 0) {
  state P : [dim, PROJ] = normal(0.02)
  state Q : [dim, PROJ] = normal(0.02)
  state R : [dim, PROJ] = normal(0.02)
  state G : [dim, GATE_WIDTH] = normal(0.02)
  state A : [dim, GATE_WIDTH] = normal(0.02)
  state O : [PROJ, dim] = normal(0.02)
  level LEVEL {
    state S : [width, width] INIT
    key kk = l2norm(x @ P)
    value vv = x @ Q
    query qq = l2norm(x @ R)
    gate b = GATE
    gate a = sigmoid(x @ A)
    UPDATE
    READ
  }
  out = OUT
}
'''
_EVERY_TOKEN = "fast every 1 token heads nh backprop"


def user_spec(update, level=_EVERY_TOKEN, gate_width="nh", proj="nh * width",
              gate="sigmoid(x @ G)", init="= 0", read="read r = S(qq)", out="r @ O"):
    text = _USER
    for key, value in (("UPDATE", update), ("LEVEL", level), ("GATE_WIDTH", gate_width),
                       ("PROJ", proj), ("GATE", gate), ("INIT", init), ("READ", read),
                       ("OUT", out)):                  # GATE_WIDTH before GATE
        text = text.replace(key, value)
    return text


_DELTA = "S <- S - b * outer(S @ kk - vv, kk)"

#: The delta rule and its relatives under other names (state S, level fast, contexts kk, vv,
#: qq, b, a), written as explicit updates and as objectives: all must take the fast path.
FAST_USER_SPECS = {
    "delta-explicit": user_spec("S <- S - b * outer(S @ kk - vv, kk)"),
    "delta-minimize-l2-gd": user_spec("minimize l2(S(kk), vv) by gd(lr = b)"),
    "delta-expanded": user_spec("S <- S - b * outer(S(kk), kk) + b * outer(vv, kk)"),
    "gated-delta-explicit": user_spec("S <- a * S - b * outer(a * S(kk) - vv, kk)"),
    "hebbian-gd-decay": user_spec("minimize -dot(S(kk), vv) by gd(lr = b, decay = a)"),
    "delta-dgd": user_spec("minimize l2(S(kk), vv) by dgd(lr = b)"),
    "overwrite-decay-0": user_spec("S <- outer(vv, kk)"),
    "no-heads": user_spec(_DELTA, level="fast every 1 token backprop", proj="width",
                          gate_width="1", gate="sigmoid(dot(x, x) / dim - 1)"),
    "no-heads-indexed-gate": user_spec(_DELTA, level="fast every 1 token backprop",
                                       proj="width", gate_width="2", gate="sigmoid(x @ G)[1]"),
    # a gate of width 1 (x @ G, G [dim, 1]) is one number per token, like a scalar
    "no-heads-width-1-gate": user_spec(_DELTA, level="fast every 1 token backprop", proj="width",
                                       gate_width="1"),
    "no-backprop": user_spec(_DELTA, level="fast every 1 token heads nh"),
    "read-before-write": user_spec(_DELTA, read="read r = S(qq) before write"),
    "two-reads": user_spec(_DELTA, read="read r = S(qq)\n    read r2 = rmsnorm(S(kk)) before write",
                           out="r @ O + r2 @ O + x"),
    "hyperparameter-gate": user_spec(_DELTA, gate="eta"),
    "clamped-gate": user_spec(_DELTA, gate="clamp(sigmoid(x @ G), 0.2, 0.8)"),
    "eye-initial-state": user_spec(_DELTA, init="= eye()"),
    "random-initial-state": user_spec(_DELTA, init="= normal(0.3)"),
    "learned-initial-state": user_spec(_DELTA, init="init learned"),
}

#: Not of the form: a channel-wise gate (b of width nh * width, not one scalar per head), the
#: delta rule with gradients at chunk-start states (`chunk 4`), a level writing every 2 tokens.
SLOW_USER_SPECS = {
    "channel-wise-gate": user_spec(_DELTA, gate_width="nh * width"),
    "delta-chunk-4": user_spec("minimize l2(S(kk), vv) by gd(lr = b)",
                               level="fast every 1 token chunk 4 heads nh backprop"),
    "delta-every-2": user_spec("minimize l2(S(kk), vv) by gd(lr = b)",
                               level="fast every 2 tokens heads nh backprop"),
}


def _user_module(text, schedule, block_size=8, seed=5):
    from _module_cases import randomize
    from nldsl.module import compile as compile_module
    torch.manual_seed(seed)
    return randomize(compile_module(text, schedule=schedule, block_size=block_size, dim=6)
                     .to(torch.float64), seed)


def _compare_user(text, steps=45, batch=2, block_size=8, monkeypatch=None):
    """Chunked vs reference for a user spec; with `monkeypatch`, chunked must not fall back."""
    ref = _user_module(text, "reference")
    fast = _user_module(text, "chunked", block_size)
    x = inputs(batch, steps, 6, 5)
    y_ref, s_ref, g_ref = _run(ref, x, 5)
    if monkeypatch is not None:
        forbid_fallback(monkeypatch)
    y, s, g = _run(fast, x, 5)
    bound = rounding_bound(steps, 4, block_size)
    assert_close(y, y_ref, bound, "y")
    for name, value in s_ref.items():
        if isinstance(value, torch.Tensor):
            assert_close(s[name], value, bound, name)
    scale = max(v.abs().max().item() for v in g_ref.values())
    for name, value in g_ref.items():
        error = (g[name] - value).abs().max().item()
        assert error <= rounding_bound(steps, 4, block_size, passes=3) * scale, name
    return fast


@pytest.mark.parametrize("name", list(FAST_USER_SPECS))
def test_users_delta_rule_takes_the_fast_path(name, monkeypatch):
    fast = _compare_user(FAST_USER_SPECS[name], monkeypatch=monkeypatch)
    assert set(fast.fast_paths) == {"fast"}
    assert fast.fast_paths["fast"].state == "S"


def test_a_gate_of_t_takes_the_fast_path(monkeypatch):
    fast = _compare_user(user_spec(_DELTA, gate="1 / t"), monkeypatch=monkeypatch)
    assert fast.fast_paths


@pytest.mark.parametrize("name", [n for n in SLOW_USER_SPECS if n != "channel-wise-gate"])
def test_other_updates_fall_back_to_the_reference(name):
    fast = _compare_user(SLOW_USER_SPECS[name])
    assert fast.fast_paths == {}


def test_channel_wise_gate_runs_and_equals_the_reference():
    _compare_user(SLOW_USER_SPECS["channel-wise-gate"])


def test_channel_wise_gate_reports_no_fast_path():
    fast = _user_module(SLOW_USER_SPECS["channel-wise-gate"], "chunked")
    assert fast.fast_paths == {}


# -- a stream cut in two (issue 9 §2) ----------------------------------------------------------

STREAM_CUTS = [pytest.param(a, id=f"cut{a}-{kind}") for a, kind in
               ((0, "empty-first"), (16, "block-boundary"), (32, "block-boundary"),
                (13, "inside-a-block"), (1, "after-one-token"), (50, "empty-second"))]


def _cut(module, x, a):
    y1, state = module(x[:, :a], end=False)
    y2, state = module(x[:, a:], state)
    return torch.cat([y1, y2], dim=1), state


@pytest.mark.parametrize("a", STREAM_CUTS)
@pytest.mark.parametrize("spec", ["deltanet", "gated_deltanet", "linear_attention"])
def test_reference_stream_cut_is_bit_identical(spec, a):
    """The reference runs the same per-token operations whatever the cut: bit for bit, conv
    caches and t included."""
    m = build(spec, "reference", heads=2, seed=6)
    x = inputs(2, 50, m.program.dim, 6)
    with torch.no_grad():
        y, state = m(x)
        y_cut, state_cut = _cut(m, x, a)
    assert torch.equal(y_cut, y)
    for name, value in flat_state(state).items():
        other = flat_state(state_cut)[name]
        assert torch.equal(other, value) if isinstance(value, torch.Tensor) else other == value, name


@pytest.mark.parametrize("a", STREAM_CUTS)
@pytest.mark.parametrize("spec", ["deltanet", "gated_deltanet", "linear_attention"])
def test_chunked_stream_cut_equals_one_call(spec, a):
    """Chunked: the blocks start where each call starts, so a cut inside a block regroups the
    sums (the inter-block state is formed at another token) and the results agree to the
    rounding bound, not bit for bit; contexts and convs are elementwise in time and see the
    carried caches, so they are not affected."""
    m = build(spec, "chunked", block_size=16, heads=2, seed=6)
    x = inputs(2, 50, m.program.dim, 6)
    with torch.no_grad():
        y, state = m(x)
        y_cut, state_cut = _cut(m, x, a)
    bound = rounding_bound(50, 5, 16)
    assert_close(y_cut, y, bound, "y")
    for name, value in flat_state(state).items():
        other = flat_state(state_cut)[name]
        if isinstance(value, torch.Tensor):
            assert_close(other, value, bound, name)
        else:
            assert other == value, name


@pytest.mark.parametrize("a", [pytest.param(a, id=f"cut{a}") for a in (3, 4, 13)])
@pytest.mark.parametrize("name", ["delta-chunk-4", "delta-every-2"])
def test_stream_cut_inside_a_chunk_or_period(name, a):
    """Chunk-start snapshots and pending sums travel in the state: a cut inside a chunk of 4
    or a period of 2 gives the one-call values bit for bit (both schedules run the reference
    for these levels)."""
    for schedule in ("reference", "chunked"):
        m = _user_module(SLOW_USER_SPECS[name], schedule)
        x = inputs(2, 21, 6, 8)
        with torch.no_grad():
            y, state = m(x)
            y_cut, state_cut = _cut(m, x, a)
        assert torch.equal(y_cut, y), schedule
        assert torch.equal(state_cut["fast"]["S"], state["fast"]["S"]), schedule


@pytest.mark.parametrize("schedule", ["reference", "chunked"])
def test_an_indexed_gate_is_per_sequence(schedule):
    """`sigmoid(x @ G)[1]` indexes the value, never the batch: each sequence of a batch gets
    its own gate (nldsl/runtime/evaluate.py indexed dim 0, the batch, before the fix)."""
    text = FAST_USER_SPECS["no-heads-indexed-gate"]
    m = _user_module(text, schedule)
    x = inputs(3, 10, 6, 9)
    with torch.no_grad():
        y, _ = m(x)
        for b in range(3):
            alone, _ = m(x[b:b + 1])
            assert_close(alone, y[b:b + 1], rounding_bound(10, 4, 8), f"sequence {b}")


@pytest.mark.parametrize("spec", ["deltanet", "gated_deltanet"])
def test_a_state_moves_between_schedules(spec):
    """The state is the same structure in both schedules: a stream started in one continues
    in the other, to the rounding bound."""
    ref = build(spec, "reference", heads=2)
    fast = build(spec, "chunked", block_size=8, heads=2)
    x = inputs(2, 20, 8, 10)
    with torch.no_grad():
        _, from_ref = ref(x[:, :9], end=False)
        _, from_fast = fast(x[:, :9], end=False)
        y, _ = ref(x[:, 9:], from_ref)
        bound = rounding_bound(20, 5, 8)
        assert_close(fast(x[:, 9:], from_ref)[0], y, bound, "reference state, chunked")
        assert_close(ref(x[:, 9:], from_fast)[0], y, bound, "chunked state, reference")


@pytest.mark.parametrize("spec", ["deltanet", "gated_deltanet"])
def test_gradients_through_a_carried_state(spec):
    """Truncated backprop across segments: the second segment's loss reaches the parameters
    through the state of the first (M and the conv caches); both schedules agree."""
    grads = {}
    x = inputs(2, 20, 8, 11)
    for schedule in ("reference", "chunked"):
        m = build(spec, schedule, block_size=8, heads=2)
        _, state = m(x[:, :9], end=False)
        y, _ = m(x[:, 9:], state)
        grads[schedule] = dict(zip(("Wk", "k_conv", "Wv"),
                                   torch.autograd.grad(y.square().sum(), [m.Wk, m.k_conv, m.Wv])))
    scale = max(g.abs().max().item() for g in grads["reference"].values())
    for name, g in grads["reference"].items():
        assert g.abs().max() > 0
        error = (grads["chunked"][name] - g).abs().max().item()
        assert error <= rounding_bound(20, 5, 8, passes=3) * scale, name


@pytest.mark.parametrize("spec", list(SPECS))
def test_head_dim_1_takes_the_fast_path_and_equals_reference(spec, monkeypatch):
    """With head_dim 1 a width heads*1 reads as H heads of width 1 or as one scalar per head:
    the chunked schedule follows the lowering's recorded split (Frame.split_as), as the
    reference does, so keys and values stay width-1 vectors and the block form applies."""
    overrides = dict(head_dim=1, heads=2)
    if "head_v_dim" in SPECS[spec][1]:
        overrides["head_v_dim"] = 1
    module = build(spec, "chunked", block_size=4, **overrides)
    expected = build(spec, "reference", **overrides)
    x = inputs(2, 9, module.program.dim, 0)
    y_ref, state_ref = expected(x)
    forbid_fallback(monkeypatch)
    y, state = module(x)
    bound = rounding_bound(9, 2, 4)
    assert_close(y, y_ref, bound, "y")
    for level, states in state_ref.items():
        for name, value in states.items():
            if isinstance(value, torch.Tensor):
                assert_close(state[level][name], value, bound, f"state {level}.{name}")
