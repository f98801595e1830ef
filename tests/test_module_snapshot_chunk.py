"""module/snapshot_chunk.py: the snapshot chunk form equals the reference schedule, and
self_modifying_titans equals a token loop written here from NL eqs. 83-93.

Outputs, final states (weights by layer, chunk-start snapshots) and the gradients of x and of
every parameter, in float64, for lengths that neither chunk size divides, one or several
sequences, and a stream cut mid-chunk. Tolerance: `deep_bound` (the same real function, sums
associated differently; gradients pass twice through it).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from _module_cases import assert_close, assert_states_close, flat_layers, forbid_fallback, inputs, \
    randomize
from nldsl.lower.snapshot_forms import SnapshotForm
from nldsl.module import compile as compile_module

from test_module_deep_memories import deep_bound

DIM = 8
#: eta_scale 0.5: with O(1) parameters the writes move every memory by far more than rounding.
SMT = dict(dim=DIM, eta_scale=0.5)


def both(chunk_projections, chunk_memory, seed=1):
    made = []
    for schedule in ("reference", "chunked"):
        torch.manual_seed(seed)
        m = compile_module("self_modifying_titans", schedule=schedule, chunk_memory=chunk_memory,
                           chunk_projections=chunk_projections, **SMT).to(torch.float64)
        made.append(randomize(m, seed))
    return made


def outputs(m, x):
    """y, the final state and the gradients; a parameter the output does not depend on (M_v's
    initial weights: v only reaches it through stop-gradient targets) has gradient 0 (the
    reference's None, the chunked form's zeros: it stacks the memories in one delta-rule call)."""
    y, state = m(x)
    loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum()
    leaves = [x] + list(m.parameters())
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return y, flat_layers(state), [torch.zeros_like(a) if g is None else g for a, g in zip(leaves, grads)]


def assert_schedules_agree(reference, chunked, x, bound: float) -> dict:
    """Outputs, final states (to `bound`) and every gradient (to twice it: two passes) of the
    two schedules agree; the reference's final state, flattened by layer."""
    (y_r, s_r, g_r), (y_c, s_c, g_c) = outputs(reference, x), outputs(chunked, x)
    assert_close(y_c, y_r, bound, "y")
    assert_states_close(s_c, s_r, bound, "")
    names = ["x"] + [n for n, _ in reference.named_parameters()]
    assert len(g_c) == len(names)
    for name, a, b in zip(names, g_c, g_r):
        assert_close(a, b, 2 * bound, f"grad {name}")
    return s_r


@pytest.mark.parametrize("steps, chunk_projections, chunk_memory, batch", [
    pytest.param(11, 3, 4, 2, id="T11-chunks3/4-B2"),
    pytest.param(9, 2, 5, 1, id="T9-chunks2/5-B1"),
    pytest.param(1, 3, 4, 1, id="T1-B1"),
])
def test_chunked_equals_reference(steps, chunk_projections, chunk_memory, batch, monkeypatch):
    reference, chunked = both(chunk_projections, chunk_memory)
    assert set(chunked.fast_paths) == {"projections", "memory"}
    assert all(isinstance(f, SnapshotForm) for f in chunked.fast_paths.values())
    forbid_fallback(monkeypatch)
    x = inputs(batch, steps, DIM, 1).requires_grad_()
    bound = deep_bound(steps, 2 * DIM)
    assert_schedules_agree(reference, chunked, x, bound)


def test_a_cut_stream_equals_one_call(monkeypatch):
    """The chunk-start snapshots travel in the state: a cut mid-chunk continues both chunks."""
    _, m = both(3, 4)
    forbid_fallback(monkeypatch)
    assert_cut_is_one_call(m, inputs(2, 10, DIM, 2), 5, deep_bound(10, 2 * DIM))


def assert_cut_is_one_call(m, x, cut: int, bound: float) -> None:
    """m on x[:, :cut] then on the rest, from the returned state, equals one call: outputs and
    every tensor of the final state."""
    with torch.no_grad():
        y, whole = m(x)
        y1, state = m(x[:, :cut], end=False)
        y2, parts = m(x[:, cut:], state)
    assert_close(torch.cat([y1, y2], dim=1), y, bound, "y")
    for key, value in flat_layers(whole).items():
        if isinstance(value, torch.Tensor):
            assert_close(flat_layers(parts)[key], value, bound, key)


def test_no_grad_values_equal_the_graph_values(monkeypatch):
    """Without autograd the form detaches per chunk; the values are the same."""
    _, m = both(3, 4)
    forbid_fallback(monkeypatch)
    x = inputs(2, 7, DIM, 3)
    y, _ = m(x)
    with torch.no_grad():
        y0, _ = m(x)
    assert not y0.requires_grad
    assert_close(y0, y.detach(), deep_bound(7, 2 * DIM), "y")


@pytest.mark.parametrize("spec, options, passes", [
    pytest.param("self_modifying_titans", SMT, (("M_k",), ("M_v", "M_eta", "M_alpha")),
                 id="smt-k-through-its-key"),
    pytest.param("hope", dict(dim=DIM), (("M_k", "M_v", "M_eta", "M_alpha"),),
                 id="hope-conv-keys-are-data"),
])
def test_backward_passes_keep_apart_the_losses_that_reach_each_other(spec, options, passes):
    """One backward per pass: M_v's, M_eta's and M_alpha's losses reach M_k through
    k = l2norm(M_k(x)) (and their targets only under stopgrad), so M_k has its own; Hope's key
    is a conv's output, data to the inner gradients, so all four share one. (That a wrong
    grouping changes the values is test_chunked_equals_reference's to see.)"""
    form = compile_module(spec, **options).fast_paths["projections"]
    assert form.passes == passes
    assert compile_module(spec, **options).fast_paths["memory"].passes == (("M_memory",),)


@pytest.mark.parametrize("spec", ["self_modifying_titans", "hope"])
def test_only_the_key_context_is_reached_by_the_inner_gradients(spec):
    """k is inlined into every loss (M(k)); v, the gates and the stop-gradient targets are
    not, so without an outer gradient they are computed without autograd
    (test_no_grad_values_equal_the_graph_values checks their values)."""
    forms = compile_module(spec, dim=DIM).fast_paths
    assert forms["projections"].reached == {"k"}
    assert forms["memory"].reached == frozenset()


# -- Hope: the snapshot form with convs on state applications, beside frozen CMS levels -----
HOPE = dict(dim=DIM, eta_scale=0.5, expansion=2, chunk_projections=3, chunk_memory=5,
            period_fast=2, period_mid=4, period_slow=8)


def hope_pair(conv_width: int, seed: int = 3):
    made = []
    for schedule in ("reference", "chunked"):
        torch.manual_seed(seed)
        made.append(randomize(compile_module("hope", schedule=schedule, conv_width=conv_width,
                                             **HOPE).to(torch.float64), seed))
    return made


@pytest.mark.parametrize("steps, conv_width, batch", [
    pytest.param(13, 4, 2, id="T13-conv4-B2"),
    pytest.param(6, 3, 1, id="T6-conv3-B1"),
    pytest.param(1, 4, 1, id="T1"),
])
def test_hope_chunked_equals_reference(steps, conv_width, batch, monkeypatch):
    """Both self-modifying levels in the snapshot form (k = l2norm(conv(M_k(x), w)),
    v = conv(M_v(x), w), q = l2norm(conv(x W_q, w))), the CMS levels frozen in the call: the
    periods (2, 4, 8) and chunks (3, 5) do not divide 13."""
    reference, chunked = hope_pair(conv_width)
    assert {name for name, f in chunked.fast_paths.items() if isinstance(f, SnapshotForm)} == \
        {"projections", "memory"}
    forbid_fallback(monkeypatch)
    x = inputs(batch, steps, DIM, 5).requires_grad_()
    assert_schedules_agree(reference, chunked, x, deep_bound(steps, 4 * DIM))


def test_hope_cut_stream_equals_one_call(monkeypatch):
    """Cut at 7, inside a chunk of each level: the conv caches and snapshots travel in the
    state."""
    _, m = hope_pair(4)
    forbid_fallback(monkeypatch)
    assert_cut_is_one_call(m, inputs(2, 12, DIM, 6), 7, deep_bound(12, 4 * DIM))


# -- the paper's token loop --------------------------------------------------------------
MEMORIES = ("M_k", "M_v", "M_eta", "M_alpha")


def residual_mlp(w, u, residual=True):
    """eq. 89: M(u) = u + W_1 sigma(W_2 u) (nldsl's layer 1 is the paper's W_2, the input side)."""
    h = (w[1] @ F.gelu(w[0] @ u.unsqueeze(-1))).squeeze(-1)                # [B, d_out]
    return h + u if residual else h


def l2n(a):
    return a / a.norm(dim=-1, keepdim=True)


def paper_loop(m, x, chunk_projections, chunk_memory, eta_scale, beta=None):
    """NL eqs. 83-93 token by token: every context of token t from the states at the start of
    its chunk (eq. 90), y_t = M_memory(q_t) there, and for every memory
    M_t = M_{t-1} (alpha_t I - eta_t k_t k_t^T) - eta_t grad L(M_{t'}; k_t, v_hat_t) (eqs. 88,
    93) on the input-side weight, alpha_t M_{t-1} - eta_t grad on the other one. The spec's
    reading (its header, 7): M_k's objective sees k_t = l2norm(M_k(x_t)) as a function of M_k.
    With `beta`, the momentum variant (examples/self_modifying_titans_momentum.nl): grad is
    replaced by m_t = beta m_{t-1} + grad, m_0 = 0, and the buffers are returned as well."""
    bsz = x.shape[0]
    weights = {name: [getattr(m, f"{name}_init_w{i}").expand(bsz, -1, -1) for i in (1, 2)]
               for name in MEMORIES + ("M_memory",)}
    residual = {"M_eta": False, "M_alpha": False}
    apply = lambda name, w, u: residual_mlp(w, u, residual.get(name, True))
    ys, snapshot = [], {}
    momentum = {name: [torch.zeros_like(w) for w in ws] for name, ws in weights.items()}
    for t in range(x.shape[1]):
        for names, chunk in ((MEMORIES, chunk_projections), (("M_memory",), chunk_memory)):
            if t % chunk == 0:
                snapshot.update({n: weights[n] for n in names})
        xt = x[:, t]
        k = l2n(apply("M_k", snapshot["M_k"], xt))                                 # eq. 83
        v = apply("M_v", snapshot["M_v"], xt)
        eta = F.softplus(apply("M_eta", snapshot["M_eta"], xt)) * eta_scale       # [B, 1]
        alpha = torch.sigmoid(apply("M_alpha", snapshot["M_alpha"], xt))
        q = l2n(xt @ m.Wq)
        ys.append(apply("M_memory", snapshot["M_memory"], q))                     # eq. 83
        new = {}
        for name in MEMORIES + ("M_memory",):
            start = snapshot[name]
            v_hat = apply(name, start, v).detach()                                # eq. 84
            with torch.enable_grad():
                leaves = [w.detach().clone().requires_grad_() for w in start]
                key = l2n(apply(name, leaves, xt)) if name == "M_k" else k
                loss = 0.5 * ((apply(name, leaves, key) - v_hat) ** 2).sum()        # eq. 85
                grads = torch.autograd.grad(loss, leaves)
            if beta is not None:
                momentum[name] = grads = [beta * b + g for b, g in zip(momentum[name], grads)]
            w1, w2 = weights[name]
            a, e = alpha.unsqueeze(-1), eta.unsqueeze(-1)                        # [B, 1, 1]
            precondition = (w1 @ k.unsqueeze(-1)) * k.unsqueeze(-2)               # (W k) k^T
            new[name] = [a * w1 - e * precondition - e * grads[0], a * w2 - e * grads[1]]
        weights = new
    if beta is not None:
        return torch.stack(ys, dim=1), weights, momentum
    return torch.stack(ys, dim=1), weights


@pytest.mark.parametrize("schedule", ["reference", "chunked"])
def test_self_modifying_titans_is_the_papers_token_loop(schedule):
    m = build_smt(schedule)
    x = inputs(2, 9, DIM, 4)
    with torch.no_grad():
        y, state = m(x)
        expected, weights = paper_loop(m, x, 3, 4, SMT["eta_scale"])
    bound = deep_bound(9, 2 * DIM)
    assert_close(y, expected, bound, "y")
    for level, names in (("projections", MEMORIES), ("memory", ("M_memory",))):
        for name in names:
            for i, w in enumerate(weights[name]):
                assert_close(state[level][name][i], w, bound, f"{name} layer {i + 1}")


def test_the_writes_move_the_memories():
    """The comparison above is not vacuous: the final weights differ from the initial ones by
    far more than the bound."""
    m = build_smt()
    x = inputs(2, 9, DIM, 4)
    with torch.no_grad():
        _, state = m(x)
    for name in MEMORIES:
        start = getattr(m, f"{name}_init_w1")
        assert (state["projections"][name][0] - start).abs().max() > 1e-2 * start.abs().max()


def build_smt(schedule="chunked"):
    torch.manual_seed(2)
    return randomize(compile_module("self_modifying_titans", schedule=schedule, chunk_memory=4,
                                    chunk_projections=3, **SMT).to(torch.float64), 2)


def smt_with_conv(tmp_path, schedule: str, width: int = 4):
    """self_modifying_titans with k = l2norm(conv(M_k(x), width)), as Hope writes its key."""
    from nldsl.library import stdlib_text

    text = stdlib_text("self_modifying_titans").replace(
        "key   k = l2norm(M_k(x))", f"key   k = l2norm(conv(M_k(x), {width}))")
    assert f"conv(M_k(x), {width})" in text
    spec = tmp_path / "smt_conv.nl"
    spec.write_text(text)
    torch.manual_seed(1)
    return randomize(compile_module(str(spec), schedule=schedule, chunk_memory=4,
                                    chunk_projections=2, **SMT).to(torch.float64), 1)


@pytest.mark.parametrize("steps, width", [
    pytest.param(9, 4, id="T9-width4"),
    pytest.param(7, 3, id="T7-width3-wider-than-a-chunk"),
])
def test_a_conv_on_a_state_application_takes_the_form(tmp_path, steps, width, monkeypatch):
    """k = l2norm(conv(M_k(x), w)): the form runs the conv once per chunk from the site's
    cache (the inputs of earlier chunks, computed at their own snapshots); the inner gradient
    takes its output as data, as the reference's once-per-token conv does. Width 3 over chunks
    of 2: a token's window reaches two chunks back."""
    reference = smt_with_conv(tmp_path, "reference", width)
    chunked = smt_with_conv(tmp_path, "chunked", width)
    assert all(isinstance(f, SnapshotForm) for f in chunked.fast_paths.values())
    assert set(chunked.fast_paths) == {"projections", "memory"}
    forbid_fallback(monkeypatch)
    x = inputs(2, steps, DIM, 1).requires_grad_()
    assert_schedules_agree(reference, chunked, x, deep_bound(steps, 2 * DIM))


def test_a_conv_in_a_before_write_read_takes_the_form(tmp_path, monkeypatch):
    """read y = conv(M_memory(q), 2) before write: the read's conv over each chunk at the
    chunk-start state, from the site's cache."""
    from nldsl.library import stdlib_text

    text = stdlib_text("self_modifying_titans").replace(
        "read y = M_memory(q) before write", "read y = conv(M_memory(q), 2) before write")
    assert "conv(M_memory(q), 2)" in text
    spec = tmp_path / "smt_read_conv.nl"
    spec.write_text(text)
    made = []
    for schedule in ("reference", "chunked"):
        torch.manual_seed(1)
        made.append(randomize(compile_module(str(spec), schedule=schedule, chunk_memory=4,
                                             chunk_projections=2, **SMT).to(torch.float64), 1))
    assert set(made[1].fast_paths) == {"projections", "memory"}
    forbid_fallback(monkeypatch)
    x = inputs(1, 9, DIM, 1).requires_grad_()
    assert_schedules_agree(*made, x, deep_bound(9, 2 * DIM))


#: Found by tests/test_fuzz_task.py, each a value first asked for by a stopgrad (its no_grad):
#: memoised for the whole call without the outer graph, so every later use lost it.
STOPGRAD_FIRST = {
    # `own`, a snapshot context computed before the losses, looked up the stateless `v`
    # (call-wide memo): grad Wv lost the path through `target = v`
    "stateless-value": """module m(dim: int = 3 >= 1) {
  state Wv : [dim, dim] = normal(0.5)
  level memory every 1 token chunk 2 backprop {
    state M : mlp(dim -> dim)
    key k = l2norm(M(x))
    value v = x @ Wv
    value target = v
    value own = stopgrad(M(v))
    M: minimize l2(M(k), target) + l2(M(k), own) by gd(lr = 0.1)
    read y = M(x) before write
  }
  out = y
}
""",
    # another level's sequence `v`, sliced to the chunk under the stopgrad (chunk memo): the
    # later M(v) of the loss lost the path to x (grad x off by 28%)
    "another-levels-value": """module m(dim: int = 3 >= 1) {
  state Wk : [dim, dim] = normal(0.5)
  level projections every 1 token chunk 2 {
    state M_v : mlp(dim -> dim)
    M_v: minimize l2(M_v(k), stopgrad(M_v(v))) by gd(lr = 0.1)
    key k = l2norm(x @ Wk)
    value v = M_v(x)
  }
  level memory every 1 token chunk 2 backprop {
    state M : mlp(dim -> dim)
    M: minimize l2(M(k), stopgrad(M(v))) + l2(M(v), x) by gd(lr = 0.1)
    read y = M(x) before write
  }
  out = y
}
""",
}


@pytest.mark.parametrize("text", [pytest.param(t, id=n) for n, t in STOPGRAD_FIRST.items()])
def test_a_value_a_stopgrad_asks_for_first_keeps_its_outer_graph(text, monkeypatch):
    """A name the chunk looks up is computed with the outer graph whichever use asks first."""
    made = []
    for schedule in ("reference", "chunked"):
        torch.manual_seed(1)
        made.append(randomize(compile_module(text, schedule=schedule).to(torch.float64), 2))
    assert made[1].fast_paths and \
        all(isinstance(f, SnapshotForm) for f in made[1].fast_paths.values())
    assert set(made[1].fast_paths) == {lv.name for lv in made[1].program.levels}
    forbid_fallback(monkeypatch)
    x = inputs(2, 8, 3, 1).requires_grad_()
    assert_schedules_agree(*made, x, deep_bound(8, 6))


WINDOW_OF_ONE = '''module windowed(dim: int >= 1) {
  state Wg : [dim, 1] = normal(1.0)
  level memory every 1 token chunk 2 {
    state M : mlp(dim -> dim)
    key k = x
    gate h = sigmoid(x @ Wg)
    minimize window(1, l2(M(k), k), h) by ema(h) then gd(lr = 0.1, decay = 0.9)
    read y = M(k) before write
  }
  out = y
}'''


def test_a_window_of_width_one_is_not_the_form():
    """A window, even of width 1 (level.window is 1 there), is the chain form's: the snapshot
    form's evaluator has no window (tests/test_fuzz_deep.py FOUND "window-1-before-write")."""
    from nldsl.lower.chain_forms import ChainForm
    m = compile_module(WINDOW_OF_ONE, schedule="chunked", dim=3)
    assert isinstance(m.fast_paths["memory"], ChainForm)


ATTENDED = '''module m(dim: int = 3 >= 1) {
  level memory every 1 token chunk 2 backprop {
    state M : mlp(dim -> dim -> dim, gelu, residual) init learned by outer
    key k = l2norm(M(x))
    value v = stopgrad(M(x))
    minimize l2(M(k), v) by dgd(lr = 0.1, decay = 0.9)
    read y = READ before write
  }
  out = y
}'''


@pytest.mark.parametrize("read, form", [
    ("M(attention(x, x, x))", None), ("M(window_attention(x, x, x, 2))", None),
    ("M(x)", SnapshotForm)], ids=["attention", "window", "plain"])
def test_an_attention_in_a_read_is_not_the_form(read, form):
    """The form evaluates a before-write read per chunk, and an attention's key-value cache
    follows the whole call: the chunked schedule raised a KeyError (`attention` inside a
    windowed expression) at the first call; the level now runs by the reference, alike."""
    text = ATTENDED.replace("READ", read)
    chunked = compile_module(text, schedule="chunked").double()
    assert type(chunked.fast_paths.get("memory")) is form if form else chunked.fast_paths == {}
    reference = compile_module(text, schedule="reference").double()
    reference.load_state_dict(chunked.state_dict())
    x = torch.randn(2, 5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert_close(chunked(x)[0], reference(x)[0], deep_bound(5, 9), "y")
