"""check_memories.py: what an mlp memory may take part in. The rejections are in the error
catalogue (tests/errors/mlp_*.nl); here, what is accepted, and that it means per weight."""
from __future__ import annotations

import pytest
import torch

import nldsl
from nldsl.module import compile as compile_module

ACCEPTED = '''module mix(dim: int >= 1) {
  state Wk : [dim, dim] = normal(0.3)
  state Wg : [dim, 1] = normal(0.3)
  level memory every 1 token {
    state M : mlp(dim -> 2 * dim -> dim, tanh)
    state N like M
    key k = x @ Wk
    gate g = sigmoid(x @ Wg)
    M <- g * M + (1 - g) * N / 2 - -N
    read y = M(k)
  }
  out = y
}
'''


@pytest.mark.parametrize("variant", [
    pytest.param(ACCEPTED, id="scaled-sum-of-two-states"),
    pytest.param(ACCEPTED.replace("g * M + (1 - g) * N / 2 - -N", "-M"), id="negation"),
])
def test_per_weight_algebra_validates(tmp_path, variant):
    path = tmp_path / "mix.nl"
    path.write_text(variant)
    nldsl.load(str(path))


def test_per_weight_algebra_is_per_weight(tmp_path):
    """One token: every layer of M becomes g W_M + (1 - g) W_N / 2 + W_N."""
    path = tmp_path / "mix.nl"
    path.write_text(ACCEPTED)
    torch.manual_seed(0)
    m = compile_module(str(path), schedule="reference", dim=3).double()
    x = torch.randn(2, 1, 3, dtype=torch.float64)
    start = m.initial_state(2)["memory"]
    with torch.no_grad():
        _, state = m(x)
        g = torch.sigmoid(x[:, 0] @ m.Wg)[:, :, None]                    # [B, 1, 1]
    from nldsl.runtime import mlp
    layout = m.program.level("memory").states["M"].mlp
    for w, w_m, w_n in zip(state["memory"]["M"], mlp.layers(layout, start["M"]),
                           mlp.layers(layout, start["N"])):
        expected = g * w_m + (1 - g) * w_n / 2 + w_n
        assert torch.allclose(w, expected, rtol=0, atol=1e-15)
