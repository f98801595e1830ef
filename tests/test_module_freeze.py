"""nldsl.freeze (nldsl/module/freeze.py, nldsl/lower/freeze.py): the network with every level
frozen is an ordinary network. Issue 11 §1: streaming learns as it reads; a switch freezes the
levels (then the outputs are the frozen reference's)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import nldsl
from nldsl.library import stdlib_names
from nldsl.lower.freeze import freeze as freeze_program

MODULES = [name for name in stdlib_names() if nldsl.load(name).kind == "module"]
DIM = 8
# float64 sums of a few hundred O(1) products in another order (the chunked schedule's GEMMs)
TOL = 1e-12


def data(batch, steps, seed=0):
    return torch.randn(batch, steps, DIM, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(seed))


def tensors(state) -> dict:
    return {(level, name, i): v for level, own in state.items() for name, value in own.items()
            for i, v in enumerate(value if isinstance(value, tuple) else (value,))
            if isinstance(v, torch.Tensor)}


def test_the_frozen_program_keeps_its_states_and_drops_every_write():
    program = nldsl.compile("hope", dim=DIM).program
    frozen = freeze_program(program)
    assert [lv.name for lv in frozen.levels] == [lv.name for lv in program.levels]
    for level, was in zip(frozen.levels, program.levels):
        assert level.writes == [] and level.task == () and level.chunk == 1
        assert level.states == was.states and level.reads == was.reads
    assert any(lv.writes for lv in program.levels) and any(lv.task for lv in program.levels)


@pytest.mark.parametrize("name", MODULES)
def test_a_frozen_module_writes_nothing_in_either_schedule(name):
    """From a state a learning call left (t 3): the frozen call returns its states unchanged
    (but t and the conv and attention caches), both schedules alike, and cut calls are one."""
    runs = {}
    for schedule in ("reference", "chunked"):
        torch.manual_seed(0)
        model = nldsl.compile(name, schedule=schedule, dim=DIM).double()
        frozen = nldsl.freeze(model)
        x = data(2, 10)
        with torch.no_grad():
            _, learned = model(x[:, :3])
            y, state = frozen(x[:, 3:], learned)
            first, part = frozen(x[:, 3:6], learned)
            rest, _ = frozen(x[:, 6:], part)
        torch.testing.assert_close(torch.cat([first, rest], 1), y, atol=TOL, rtol=0)
        for key, value in tensors(learned).items():
            if key[0] != "_stream":
                assert torch.equal(tensors(state)[key], value), key
        assert state["_stream"]["t"] == 10
        runs[schedule] = y
    torch.testing.assert_close(runs["chunked"], runs["reference"], atol=TOL, rtol=0)


def _residual_mlp(model, name, u):
    """M(u) = W2 gelu(W1 u) + u at the learned initial weights (hope.nl's memories)."""
    w1, w2 = model.get_parameter(f"{name}_init_w1"), model.get_parameter(f"{name}_init_w2")
    return F.gelu(u @ w1.mT) @ w2.mT + u


def _causal_conv(a, kernel):
    """y_t[c] = sum_j kernel[c, j] a_{t-W+1+j}[c], zeros before the stream."""
    width = kernel.shape[1]
    padded = F.pad(a, (0, 0, width - 1, 0))
    return sum(padded[:, j:j + a.shape[1]] * kernel[:, j] for j in range(width))


def test_frozen_hope_is_the_ordinary_network_of_its_initial_states():
    """hope.nl with no level writing: o = M_memory(l2norm(conv(x Wq))), the CMS chain
    y = theta_fast(theta_mid(theta_slow(o))), every memory at its learned initial state;
    computed here in plain torch from the module's parameters."""
    torch.manual_seed(0)
    model = nldsl.compile("hope", dim=DIM).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    x = data(2, 9)
    y, _ = nldsl.freeze(model)(x)
    q = F.normalize(_causal_conv(x @ model.Wq, model.q_conv), dim=-1, eps=1e-12)
    h = _residual_mlp(model, "M_memory", q)
    for name in ("theta_slow", "theta_mid", "theta_fast"):
        h = _residual_mlp(model, name, h)
    torch.testing.assert_close(y, h, atol=1e-10, rtol=0)


def test_a_frozen_network_shares_the_models_parameters_and_streams_as_a_plain_call():
    """nldsl.lm: the frozen network's parameters are the model's tensors; through nldsl.stream
    (no level left to teach) it is the plain call, and the states it returns are the ones it
    was given."""
    torch.manual_seed(0)
    model = nldsl.lm("hope", vocab_size=7, dim=DIM, depth=2, period_slow=4, period_mid=2,
                     period_fast=1, chunk_memory=2, chunk_projections=2).double()
    frozen = nldsl.freeze(model)
    assert all(a is b for a, b in zip(frozen.parameters(), model.parameters()))
    assert sum(1 for _ in frozen.parameters()) == sum(1 for _ in model.parameters())
    tokens = torch.randint(0, 7, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, learned = nldsl.stream(model, tokens[:, :4], tokens[:, 1:5], end=False)
        streamed, state = nldsl.stream(frozen, tokens[:, 4:], tokens[:, 4:], learned)
        plain, _ = frozen(tokens[:, 4:], learned)
    assert torch.equal(streamed, plain)
    for block, was in zip(state, learned):
        for key, value in tensors(was).items():
            if key[0] != "_stream":
                assert torch.equal(tensors(block)[key], value), key


def test_freeze_takes_a_module_or_a_network():
    with pytest.raises(TypeError, match="nldsl.freeze takes a compiled module"):
        nldsl.freeze(torch.nn.Linear(2, 2))
