"""Softmax attention in module specs (nldsl/runtime/attention.py, lower/sequence.py): the chunked
schedule (scaled_dot_product_attention over the call) equals the reference (one query at a time,
explicit softmax), a loop written here from the definition equals both, the key-value cache
carries a stream across calls, and misuses are located errors.

Tolerance: `attention_bound`. One output is a softmax over S visible keys of scores q . k of
width d, then a weighted sum of S values: each evaluation's error is within (S + d + 3) u of
the terms' magnitude (Higham's gamma_n for the two inner products, a few u for exp and the
division), and scores are O(1) with the randomized parameters, so exp does not amplify it. The
Titans architectures add the deep memory's bound (tests/test_module_deep_memories.py), and
gradients double it (the backward pass sums the same products again).
"""
from __future__ import annotations

import math
import re

import pytest
import torch

import nldsl
from _module_cases import U64, assert_close, assert_states_close, flat_layers, forbid_fallback, \
    inputs, randomize
from nldsl.errors import NLDSLCompileError
from nldsl.module import compile as compile_module
from test_module_deep_memories import deep_bound

_ATTEND = '''module att(dim: int >= 1, heads = 2 >= 1, head_dim = 4 >= 1, w = 3 >= 1,
                n_persist = 2 >= 1) {
  state Wq : [dim, heads * head_dim] = normal(0.3)
  state Wk : [dim, heads * head_dim] = normal(0.3)
  state Wk2 : [dim, heads * head_dim] = normal(0.3)
  state Wv : [dim, heads * head_dim] = normal(0.3)
  state P_k : [n_persist, heads * head_dim] = normal(0.3)
  state P_v : [n_persist, heads * head_dim] = normal(0.3)
  state Wo : [heads * head_dim, dim] = normal(0.3)
  level attend every 1 token heads heads {
    query q = rope(x @ Wq)
    key   k = rope(x @ Wk)
    key   k2 = rope(x @ Wk2)
    value v = x @ Wv
    read  o = CALL
  }
  out = o @ Wo
}
'''
#: id -> (spec, hyper-parameters, whether the chunked schedule has a fast form for every level:
#: titans_mac's runs one segment at a time, lower/schedule.segment_chunks)
SPECS = {
    "softmax_attention": ("softmax_attention", dict(dim=8, heads=2, head_dim=4), True),
    "window": (_ATTEND.replace("CALL", "window_attention(q, k, v, w)"), dict(dim=8), True),
    "segment": (_ATTEND.replace("CALL", "segment_attention(q, k, v, w)"), dict(dim=8), True),
    "window-streams-prefix": (_ATTEND.replace("CALL", "window_attention(q, (k, k2), (v, tanh(v)),"
                                              " w, prefix = (P_k, P_v))"), dict(dim=8), True),
    "full-streams-prefix": (_ATTEND.replace("CALL", "attention(q, (k2, k), (tanh(v), v), "
                                            "prefix = (P_k, P_v))"), dict(dim=8), True),
    "titans_mag": ("titans_mag", dict(dim=8, heads=2, head_dim=4, chunk_size=3, max_lr=0.5,
                                      window_size=4, n_persist=2), True),
    "titans_mal": ("titans_mal", dict(dim=8, heads=2, head_dim=4, chunk_size=3, max_lr=0.5,
                                      window_size=4, n_persist=2), True),
    "titans_mac": ("titans_mac", dict(dim=8, heads=2, head_dim=4, segment=3, max_lr=0.5,
                                      n_persist=2), True),
}


def build(spec_id: str, schedule: str, block_size: int = 4, seed: int = 0):
    spec, hparams, _ = SPECS[spec_id]
    torch.manual_seed(seed)
    module = compile_module(spec, schedule=schedule, block_size=block_size, **hparams)
    return randomize(module.to(torch.float64), seed)


def attention_bound(steps: int, width: int = 4, deep: bool = False) -> float:
    keys = 2 * steps + 2 + width + 3                  # two streams and two persistent keys at most
    bound = 2 * 8 * keys * U64
    return bound + (deep_bound(steps, 16) if deep else 0.0)



def run(m, x):
    """y, the flat state and the gradients of a fixed weighting of y w.r.t. x and every
    parameter (None for the parameters a spec of _ATTEND leaves unused)."""
    y, state = m(x)
    loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum()
    grads = torch.autograd.grad(loss, [x] + list(m.parameters()), allow_unused=True)
    return y, flat_layers(state), grads


@pytest.mark.parametrize("steps, block", [pytest.param(11, 4, id="T11-block4"),
                                          pytest.param(7, 3, id="T7-block3")])
@pytest.mark.parametrize("spec", list(SPECS))
def test_chunked_equals_reference(spec, steps, block, monkeypatch):
    """Outputs, final states (the key-value caches, the memories) and the gradients of x and of
    every parameter, float64, T odd and not a multiple of the block or the chunk."""
    reference, chunked = build(spec, "reference", block), build(spec, "chunked", block)
    if SPECS[spec][2]:
        assert set(chunked.fast_paths) == {level.name for level in chunked.program.levels}
        forbid_fallback(monkeypatch)
    else:
        assert chunked.fast_paths == {}       # titans_mac: both schedules run the reference
    x = inputs(2, steps, 8, 1).requires_grad_()
    bound = attention_bound(steps, deep=spec.startswith("titans"))
    (y_r, s_r, g_r), (y_c, s_c, g_c) = run(reference, x), run(chunked, x)
    assert_close(y_c, y_r, bound, f"{spec} y")
    assert_states_close(s_c, s_r, bound, spec)
    names = ["x"] + [n for n, _ in reference.named_parameters()]
    assert len(g_r) == len(names)
    for name, a, b in zip(names, g_c, g_r):
        assert (a is None) == (b is None), name
        if b is not None:
            assert_close(a, b, 2 * bound, f"{spec} grad {name}")
    if not spec.startswith(("window", "segment")):         # every parameter is used
        assert all(g is not None for g in g_r)


@pytest.mark.parametrize("cuts", [pytest.param((1,), id="after-1"), pytest.param((2, 5), id="2-5"),
                                  pytest.param((3, 4, 8), id="3-4-8")])
@pytest.mark.parametrize("schedule", ["reference", "chunked"])
@pytest.mark.parametrize("spec", list(SPECS))
def test_a_cut_stream_equals_one_call(spec, schedule, cuts):
    """x[:, :a] then x[:, a:] with the returned state is one call: the cache grows (attention)
    or keeps the last width - 1 positions (window, segment), and the memories carry on."""
    m = build(spec, schedule)
    x = inputs(2, 9, 8, 2)
    with torch.no_grad():
        y, state = m(x)
        parts, carried, edges = [], None, (0,) + cuts + (9,)
        for a, b in zip(edges[:-1], edges[1:]):
            part, carried = m(x[:, a:b], carried, end=b == 9)
            parts.append(part)
    bound = attention_bound(9, deep=spec.startswith("titans"))
    assert_close(torch.cat(parts, 1), y, bound, "y")
    whole, cut = flat_layers(state), flat_layers(carried)
    assert whole.keys() == cut.keys()
    for key, value in whole.items():
        if isinstance(value, torch.Tensor):
            assert_close(cut[key], value, bound, key)


@pytest.mark.parametrize("spec, entry, length", [
    pytest.param("softmax_attention", "o_attention", lambda t: t, id="full-grows"),
    pytest.param("window", "o_attention", lambda t: 2, id="window-keeps-w-1"),
    pytest.param("window-streams-prefix", "o_attention", lambda t: 4, id="two-streams"),
    pytest.param("titans_mac", "y_attention", lambda t: 4, id="mac-segment"),
])
def test_the_cache_is_documented_state(spec, entry, length):
    m = build(spec, "chunked")
    with torch.no_grad():
        for steps in (1, 5):
            _, state = m(inputs(3, steps, 8, 0))
            keys, values = state["_stream"][f"{entry}.keys"], state["_stream"][f"{entry}.values"]
            assert keys.shape == (3, 2, length(steps), 4) and values.shape == keys.shape
    cut = {**state, "_stream": {**state["_stream"], f"{entry}.keys": keys[:, :, 1:]}}
    with pytest.raises(ValueError, match=re.escape(f"state['_stream']['{entry}.keys'] has shape")):
        m(inputs(3, 2, 8, 0), cut)


# -- the definition, as a loop over tokens -------------------------------------------------

def rope_loop(a: torch.Tensor) -> torch.Tensor:
    """a [B, T, H, d] rotated token by token: the pair (a_i, a_{i+d/2}) of the token at 0-based
    position p by the 2x2 rotation of angle p * 10000^(-2i/d)."""
    out = torch.empty_like(a)
    d = a.shape[-1]
    for p in range(a.shape[1]):
        for i in range(d // 2):
            angle = p * 10000.0 ** (-2 * i / d)
            c, s = math.cos(angle), math.sin(angle)
            x1, x2 = a[:, p, :, i], a[:, p, :, i + d // 2]
            out[:, p, :, i], out[:, p, :, i + d // 2] = c * x1 - s * x2, s * x1 + c * x2
    return out


def attention_loop(q, keys, values, sees, prefix=None):
    """o_t = sum over visible (key, value) of softmax(q_t . key / sqrt(d)) value, one token and
    one head at a time; keys, values: lists of streams [B, T, H, d]; sees(t, s) for 1-based
    positions; prefix (P_k, P_v) [N_p, H, d] seen by every token."""
    bsz, steps, heads, d = q.shape
    out = torch.zeros(bsz, steps, heads, values[0].shape[-1], dtype=q.dtype)
    for b in range(bsz):
        for h in range(heads):
            for t in range(1, steps + 1):
                pairs = [(prefix[0][i, h], prefix[1][i, h]) for i in range(prefix[0].shape[0])] \
                    if prefix is not None else []
                pairs += [(k[b, s - 1, h], v[b, s - 1, h]) for s in range(1, t + 1)
                          if sees(t, s) for k, v in zip(keys, values)]
                scores = torch.stack([q[b, t - 1, h] @ k / math.sqrt(d) for k, _ in pairs])
                weights = torch.softmax(scores, 0)
                out[b, t - 1, h] = sum(w * v for w, (_, v) in zip(weights, pairs))
    return out


LOOPS = {
    "softmax_attention": (lambda t, s: True, False, False),
    "window": (lambda t, s: t - s < 3, False, False),
    "segment": (lambda t, s: (t - 1) // 3 == (s - 1) // 3, False, False),
    "window-streams-prefix": (lambda t, s: t - s < 3, True, True),
}


@pytest.mark.parametrize("schedule", ["reference", "chunked"])
@pytest.mark.parametrize("spec", list(LOOPS))
def test_attention_is_its_definition(spec, schedule):
    m = build(spec, schedule)
    sees, streams, prefix = LOOPS[spec]
    x = inputs(2, 8, 8, 3)
    heads = lambda a: a.reshape(2, 8, 2, 4)
    with torch.no_grad():
        y, _ = m(x)
        q, k = rope_loop(heads(x @ m.Wq)), rope_loop(heads(x @ m.Wk))
        v = heads(x @ m.Wv)
        keys, values = [k], [v]
        if streams:
            keys, values = [k, rope_loop(heads(x @ m.Wk2))], [v, torch.tanh(v)]
        persistent = (m.P_k.reshape(2, 2, 4), m.P_v.reshape(2, 2, 4)) if prefix else None
        o = attention_loop(q, keys, values, sees, persistent)
        expected = o.reshape(2, 8, 8) @ m.Wo
    assert_close(y, expected, attention_bound(8), f"{spec} y")


@pytest.mark.parametrize("spec", list(SPECS))
def test_a_token_never_sees_later_tokens(spec):
    """Changing x after token 5 leaves y up to token 5 unchanged (titans_mac: the memory reads
    of a segment are seen causally, so a read of a later query does not leak)."""
    m = build(spec, "chunked")
    x = inputs(1, 9, 8, 4)
    later = x.clone()
    later[:, 5:] += inputs(1, 4, 8, 5)
    with torch.no_grad():
        y, _ = m(x)
        y_later, _ = m(later)
    assert torch.equal(y[:, :5], y_later[:, :5])
    assert not torch.allclose(y[:, 5:], y_later[:, 5:])


def test_rope_preserves_norms_and_depends_on_relative_positions():
    from nldsl.runtime.attention import rope
    generator = torch.Generator().manual_seed(0)
    q, k = (torch.randn(6, generator=generator, dtype=torch.float64) for _ in range(2))
    at = lambda a, p: rope(a, torch.tensor(float(p), dtype=torch.float64))
    assert torch.equal(at(q, 0), q)
    assert_close(at(q, 7).norm(), q.norm(), 4 * U64, "norm")
    assert_close(at(q, 9) @ at(k, 4), at(q, 5) @ at(k, 0), 64 * U64, "q.k at offset 5")
    assert not torch.allclose(at(q, 9) @ at(k, 4), at(q, 4) @ at(k, 4))


def test_softmax_attention_is_a_language_model_block():
    model = nldsl.lm("softmax_attention", vocab_size=5, dim=8, depth=2, heads=2, head_dim=4)
    tokens = torch.randint(0, 5, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, _ = model(tokens)
        first, state = model(tokens[:, :3], end=False)
        second, _ = model(tokens[:, 3:], state)
    assert logits.shape == (2, 7, 5)
    assert torch.allclose(torch.cat([first, second], 1), logits, atol=1e-6)


# -- located errors -------------------------------------------------------------------------

BAD = {
    "rope-odd-width": ("read o = attention(q, k, v)", dict(head_dim=3), "rope(x @ Wq)",
                       "rope rotates pairs"),
    "window-0": ("read o = window_attention(q, k, v, 0)", {}, "0)", "window 0 is not a positive"),
    "segment-half": ("read o = segment_attention(q, k, v, 1.5)", {}, "1.5",
                     "segment size 1.5 is not"),
    "prefix-not-a-pair": ("read o = attention(q, k, v, prefix = (P_k))", {}, "P_k))",
                          "`prefix` is not a pair"),
    "prefix-a-context": ("read o = attention(q, k, v, prefix = (k, v))", {}, "(k, v))",
                         "`prefix` is not a pair"),
    "streams-differ": ("read o = attention(q, (k, k2), v)", {}, "attention(q, (k, k2), v)",
                       "2 key streams and 1 value streams"),
    "q-k-widths": ("read o = attention(q, concat(k, k), v)", {}, "attention(q, concat(k, k), v)",
                   "the queries have width"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_uses_are_located(name):
    """At the first place in the spec where `where` is written."""
    read, hparams, where, message = BAD[name]
    text = re.sub(r"    read  o = CALL", "    " + read, _ATTEND)
    with pytest.raises(NLDSLCompileError) as info:
        compile_module(text, dim=8, **hparams)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if where in row)
    col = text.splitlines()[line - 1].index(where) + 1
    assert f":{line}:{col}: error:" in str(info.value)
    assert message in str(info.value)


def test_attention_differentiated_twice_has_a_second_derivative():
    """Under `differentiated_twice` (the task driver's second-order inner gradients) the chunked
    schedule's attention has a differentiable backward, and it is the same function: CPU's
    fused kernel has none ("derivative for ..._backward is not implemented")."""
    from nldsl.runtime.attention import differentiated_twice

    m = build("softmax_attention", "chunked").double()
    x = torch.randn(2, 5, m.program.hparams["dim"], dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    y_fused, _ = m(x)
    with differentiated_twice():
        y, _ = m(x)
    assert_close(y, y_fused, 1e-12, "y")
    (g,) = torch.autograd.grad((y ** 2).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x)
    assert torch.isfinite(gg).all() and gg.abs().max() > 0
