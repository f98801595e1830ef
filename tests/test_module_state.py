"""module/state.py: an MLP memory's state is a tuple of weights by layer at the boundary."""
from __future__ import annotations

import pytest
import torch

from nldsl.module import compile as compile_module


@pytest.fixture(scope="module")
def titans():
    torch.manual_seed(0)
    return compile_module("titans", schedule="reference", dim=8, heads=2, head_dim=4,
                          chunk_size=2).double()


def test_mlp_state_is_its_layers(titans):
    x = torch.randn(3, 3, 8, dtype=torch.float64)
    with torch.no_grad():
        _, state = titans(x, end=False)
    for entry in ("M", "M_momentum", "M.chunk_start"):
        w1, w2 = state["memory"][entry]
        assert w1.shape == (3, 2, 16, 4) and w2.shape == (3, 2, 4, 16), entry


def test_a_stream_resumes_from_the_layers(titans):
    """Saving the weights by layer and resuming gives the one-call values (T 4 = 2 chunks)."""
    x = torch.randn(2, 4, 8, dtype=torch.float64)
    with torch.no_grad():
        y, whole = titans(x)
        y1, half = titans(x[:, :2], end=False)
        saved = {level: {name: tuple(w.clone() for w in v) if isinstance(v, tuple) else v
                         for name, v in own.items()} for level, own in half.items()}
        y2, rest = titans(x[:, 2:], saved)
    assert torch.equal(torch.cat([y1, y2], 1), y)
    for a, b in zip(rest["memory"]["M"], whole["memory"]["M"]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("change, message", [
    pytest.param(lambda m: m[:1], "a tuple of 2 weights .* got 1", id="one-layer-missing"),
    pytest.param(lambda m: (m[1], m[0]), "layer 1 has shape", id="layers-swapped"),
    pytest.param(lambda m: torch.cat([w.flatten(-2) for w in m], -1), "got Tensor",
                 id="flat-tensor"),
])
def test_a_wrong_mlp_state_is_named(titans, change, message):
    x = torch.randn(1, 2, 8, dtype=torch.float64)
    with torch.no_grad():
        _, state = titans(x)
    state["memory"]["M"] = change(state["memory"]["M"])
    with pytest.raises(ValueError, match=message):
        titans(x, state)
