"""nldsl/lower/module.py: periods, chunks and heads are evaluated from the hyper-parameters
actually passed (not the defaults), chunk defaults are resolved, and every level comes out
with its head steps and placements."""
from __future__ import annotations

import pytest

from nldsl.errors import NLDSLError
from nldsl.lower.module import lower_module
from nldsl.lower.program import HeadMerge, HeadSplit
from nldsl.module.checks import resolve_hparams
from nldsl.spec import load

#: A two-level module whose period, chunk and heads are hyper-parameters.
PERIODIC = """module periodic(dim: int >= 1, n = 2 >= 1, c = 2 >= 1, h = 2 >= 1, hd = 2 >= 1) {
  state Wk : [dim, h * hd] = normal(0.02)
  state Wo : [h * hd, dim] = normal(0.02)
  level slow every n tokens chunk c heads h {
    state M : [hd, hd] = 0
    key k = x @ Wk
    minimize -dot(M(k), k) by gd(lr = 0.1)
    read y = M(k)
  }
  out = y @ Wo
}"""

NO_CHUNK = PERIODIC.replace(" chunk c", "")


def lowered(text, **given):
    spec = load(text)
    return lower_module(spec, resolve_hparams(spec, dict(dim=4) | given))


@pytest.mark.parametrize("text, given, period, chunk, heads", [
    pytest.param(PERIODIC, {}, 2, 2, 2, id="defaults"),
    pytest.param(PERIODIC, dict(n=3, c=6, h=4), 3, 6, 4, id="passed"),
    pytest.param(PERIODIC, dict(n=1, c=5), 1, 5, 2, id="chunk-over-period-1"),
    pytest.param(NO_CHUNK, dict(n=5), 5, 5, 2, id="chunk-defaults-to-period"),
    pytest.param(NO_CHUNK, dict(n=1, h=1), 1, 1, 1, id="one-head"),
])
def test_period_chunk_heads_are_ints_of_the_values_passed(text, given, period, chunk, heads):
    (level,) = lowered(text, **given).levels
    assert (level.period, level.chunk, level.heads) == (period, chunk, heads)
    assert all(type(v) is int for v in (level.period, level.chunk, level.heads))


def test_shapes_and_head_steps_follow_the_values_passed():
    program = lowered(PERIODIC, h=3, hd=5)
    (level,) = program.levels
    assert program.params["Wk"].shape == (4, 15)
    assert level.states["M"].shape == (5, 5)
    assert level.splits == (HeadSplit("k", 3, 5),)
    assert level.merges == (HeadMerge("y", 3, 5),)


def test_a_chunk_that_is_not_a_multiple_of_the_period_is_a_located_error():
    with pytest.raises(NLDSLError, match=r"chunk 4 of level 'slow' is not a multiple of its "
                                         r"period 3") as err:
        lowered(PERIODIC, n=3, c=4)
    assert err.value.problems[0].line == 4


@pytest.mark.parametrize("name, given, heads, head_dim", [
    pytest.param("deltanet", dict(dim=8), 4, 64, id="deltanet-defaults"),
    pytest.param("deltanet", dict(dim=8, heads=2, head_dim=3), 2, 3, id="deltanet-passed"),
    pytest.param("linear_attention", dict(dim=8, heads=1, head_dim=6), 1, 6, id="linear-1-head"),
])
def test_stdlib_levels_take_the_heads_passed(name, given, heads, head_dim):
    spec = load(name)
    (level,) = lower_module(spec, resolve_hparams(spec, given)).levels
    assert level.heads == heads
    assert level.states["M"].shape == (head_dim, head_dim)
    assert {s.name: (s.heads, s.width) for s in level.splits}["k"] == (heads, head_dim)
    assert [(m.read, m.merged) for m in level.merges] == [("y", heads * head_dim)]


def test_every_context_and_read_is_placed():
    spec = load("gated_deltanet")
    (level,) = lower_module(spec, resolve_hparams(spec, dict(dim=8))).levels
    assert set(level.placements) == set(level.contexts) | set(level.reads)


@pytest.mark.parametrize("declaration, shape", [
    pytest.param("state N like M = 0", (4, 4), id="like-a-fast-state"),
    pytest.param("state N like Wk = 0", (4, 4), id="like-an-outer-parameter"),
    pytest.param("state P : [dim] = 0\n    state N like P = 0", (4,), id="like-a-vector"),
])
def test_a_like_state_takes_the_shape_it_names(declaration, shape):
    text = """module likes(dim = 4) {
  state Wk : [dim, dim] = normal(0.5)
  level memory every 1 token {
    key k = x @ Wk
    state M : [dim, dim] = 0
    DECLARATION
    M: minimize -dot(M(k), x) by gd(0.1)
    read y = M(x)
  }
  out = y
}""".replace("DECLARATION", declaration)
    (level,) = lowered(text).levels
    assert level.states["N"].shape == shape


#: A matrix memory written by eq. 88 as printed, under chunk 2.
PRECONDITIONED = """module preconditioned(dim: int >= 1) {
  state Wk : [dim, dim] = normal(0.02)
  level fast every 1 token chunk 2 {
    state M : [dim, dim] = 0
    key k = l2norm(x @ Wk)
    minimize l2(M(k), x) by dgd(lr = 0.5, decay = 0.9, normalized = false, precondition = FLAG)
    read y = M(k)
  }
  out = y
}"""


def test_dgd_precondition_names_the_key_of_the_l2_term():
    (level,) = lowered(PRECONDITIONED.replace("FLAG", "true")).levels
    (write,) = level.writes
    assert write.precondition.id == "k" and write.derivation == "dgd preconditioned closed form"
    (plain,) = lowered(PRECONDITIONED.replace("FLAG", "false")).levels
    assert plain.writes[0].precondition is None


@pytest.mark.parametrize("change, message", [
    pytest.param(("l2(M(k), x)", "-dot(M(k), x)"), "needs a key", id="no-l2-term"),
    pytest.param(("precondition = FLAG", "precondition = 1 > 0"), "must be true or false",
                 id="not-a-literal"),
])
def test_dgd_precondition_errors_are_located_at_check(change, message):
    from nldsl.lower.unsupported import check_supported
    text = PRECONDITIONED.replace(*change).replace("FLAG", "true")
    with pytest.raises(NLDSLError, match=message) as err:
        check_supported(load(text))
    assert err.value.problems[0].line == 6


def test_precondition_acts_on_the_previous_tokens_state():
    """Eqs. 88, 90 on a matrix memory: M_t = 0.9 M_{t-1} - 0.5 (M_{t-1} k) k^T
    - 0.5 (M_{t'} k - x) k^T, t' the chunk start, by a loop written here."""
    import torch
    from nldsl.module import compile as compile_module
    m = compile_module(PRECONDITIONED.replace("FLAG", "true"), dim=3).to(torch.float64)
    with torch.no_grad():
        m.Wk.copy_(torch.randn(3, 3, dtype=torch.float64))
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    with torch.no_grad():
        y, state = m(x)
    s = torch.zeros(2, 3, 3, dtype=torch.float64)
    ys, start = [], s
    for t in range(5):
        if t % 2 == 0:
            start = s                     # the chunk-start state, every second token
        k = x[:, t] @ m.Wk
        k = k / k.norm(dim=-1, keepdim=True)
        outer = lambda a, b: a.unsqueeze(-1) * b.unsqueeze(-2)
        s = 0.9 * s - 0.5 * outer((s @ k.unsqueeze(-1)).squeeze(-1), k) \
            - 0.5 * outer((start @ k.unsqueeze(-1)).squeeze(-1) - x[:, t], k)
        ys.append((s @ k.unsqueeze(-1)).squeeze(-1))
    assert torch.allclose(y, torch.stack(ys, dim=1), atol=1e-12)
    assert torch.allclose(state["fast"]["M"], s, atol=1e-12)


LIKE_MLP = """module pair(dim: int >= 1) {
  level memory every 1 token {
    state M : mlp(dim -> 2 * dim -> dim)
    state N like M
    M: minimize l2(M(x), x) by gd(lr = 0.1)
    N: minimize l2(N(x), x) by gd(lr = 0.1)
    read y = M(x) + N(x)
  }
  out = y
}"""


def test_a_state_like_an_mlp_is_written_as_an_mlp():
    """`state N like M`: N has M's layout and its objective the same autograd write as M's, not
    a matrix's closed-form gradient (tests/test_fuzz_deep.py FOUND "mlp-state-like-mlp")."""
    level = lowered(LIKE_MLP).level("memory")
    assert level.states["N"].mlp == level.states["M"].mlp is not None
    writes = {w.target: w for w in level.writes}
    assert writes["N"].grad is None and writes["N"].loss is not None
    assert (writes["M"].grad is None) == (writes["N"].grad is None)
