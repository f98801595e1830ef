"""`nldsl.lm`: shapes, one compiled module per block, tied and untied heads, the state carried
across calls, and gradients reaching every parameter."""
import pytest
import torch

import nldsl

SMALL = {"heads": 2, "head_dim": 8}
SPECS = ["deltanet", "gated_deltanet", "linear_attention"]


def model(spec="deltanet", **options):
    torch.manual_seed(0)
    return nldsl.lm(spec, vocab_size=11, dim=16, depth=2, **{**SMALL, **options})


@pytest.mark.parametrize("spec", SPECS)
def test_shapes_and_state(spec):
    m = model(spec)
    tokens = torch.randint(0, 11, (3, 20))
    logits, state = m(tokens)
    assert logits.shape == (3, 20, 11)
    assert len(state) == 2 and all("memory" in s for s in state)
    assert state[0]["memory"]["M"].shape[0] == 3


def test_every_block_is_its_own_module():
    m = model()
    a, b = (dict(block.named_parameters()) for block in m.blocks)
    assert a.keys() == b.keys() and not torch.equal(a["Wk"], b["Wk"])
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(a.values(), b.values()))


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_head_reads_the_final_norm(tied):
    """logits = RMSNorm(h) @ W^T, W the embedding when tied, the head's own weight if not."""
    m = model(tied=tied)
    assert ("head.weight" in dict(m.named_parameters())) == (not tied)
    seen = []
    m.final_norm.register_forward_hook(lambda mod, inp, out: seen.append(out))
    logits, _ = m(torch.randint(0, 11, (2, 5)))
    weight = m.embedding.weight if tied else m.head.weight  # [V, dim]
    torch.testing.assert_close(logits, seen[0] @ weight.T)


@pytest.mark.parametrize("spec", SPECS)
def test_two_halves_at_a_chunk_boundary_equal_one_call(spec):
    torch.manual_seed(0)
    m = nldsl.lm(spec, vocab_size=11, dim=16, depth=2, block_size=8, **SMALL).double()
    tokens = torch.randint(0, 11, (2, 32))
    whole, state = m(tokens)
    first, s = m(tokens[:, :16], end=False)
    second, s = m(tokens[:, 16:], s)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=0, atol=1e-10)
    torch.testing.assert_close(s[1]["memory"]["M"], state[1]["memory"]["M"], rtol=0, atol=1e-10)


def test_reference_and_chunked_schedules_agree():
    tokens = torch.randint(0, 11, (2, 12))
    chunked, _ = model().double()(tokens)
    reference, _ = model(schedule="reference").double()(tokens)
    torch.testing.assert_close(chunked, reference, rtol=0, atol=1e-10)


def test_gradients_reach_every_parameter():
    m = model()
    logits, _ = m(torch.randint(0, 11, (2, 10)))
    logits.square().mean().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


@pytest.mark.parametrize("call,message", [
    (lambda m: m(torch.zeros(2, 3)), "long"),
    (lambda m: m(torch.zeros(2, 3, dtype=torch.long), state=[{}]), "block states")],
    ids=["float-tokens", "short-state"])
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call(model())


def test_bad_sizes():
    with pytest.raises(ValueError, match=">= 1"):
        nldsl.lm("deltanet", vocab_size=4, dim=8, depth=0)


def test_repr_names_the_spec():
    assert "spec=deltanet" in repr(model())
