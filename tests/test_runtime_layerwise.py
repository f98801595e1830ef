"""runtime/layerwise.py: per-weight expressions on flat MLP weights, and channel-wise gates."""
from __future__ import annotations

import pytest
import torch

from nldsl.lower.program import MLPLayout
from nldsl.language.parser import parse
from nldsl.runtime import layerwise, mlp
from nldsl.runtime.frame import Frame

LAYOUT = MLPLayout((3, 12, 3), "gelu", True)          # head_dim 3 -> 4 * head_dim -> head_dim
HEADS = Frame(1, 2)                                   # [B, H] batch dims


def parse_expr(text: str):
    """The expression of a one-line spec `W <- <text>`."""
    return parse("optimizer t() { level a every 1 step { W <- %s } }" % text, "t").levels[0].items[0].value


def _weights(seed: int):
    torch.manual_seed(seed)
    return mlp.initial(LAYOUT, (2, 2), torch.float64)                  # [B, H, o, i] per layer


def _evaluate(text: str, values: dict, memories=("A",)):
    flat = {n: mlp.flatten(LAYOUT, w) if isinstance(w, tuple) else w for n, w in values.items()}
    return mlp.layers(LAYOUT, layerwise.evaluate(
        LAYOUT, parse_expr(text), HEADS, flat.__getitem__, None, None, set(memories)))


@pytest.mark.parametrize("text, per_matrix", [
    pytest.param("A / norm(A)", lambda w: w / w.norm(dim=-1, keepdim=True), id="row-norm"),
    pytest.param("2 * softmax(A)", lambda w: 2 * w.softmax(-1), id="row-softmax"),
    pytest.param("A / sum(transpose(sum(abs(A) ** 4))) ** 0.5",
                 lambda w: w / w.abs().pow(4).sum((-2, -1), keepdim=True) ** 0.5,
                 id="entrywise-lq-norm-of-each-matrix"),
    pytest.param("A + stopgrad(-A)", lambda w: w - w, id="stopgrad"),
])
def test_a_per_weight_expression_is_the_matrix_expression_on_each_layer(text, per_matrix):
    weights = _weights(0)
    for got, w in zip(_evaluate(text, {"A": weights}), weights):
        torch.testing.assert_close(got, per_matrix(w), rtol=0, atol=1e-15)


def test_values_in_a_per_weight_expression_are_one_number_per_head():
    """g [B, H] scales every weight of head h by g[b, h]; B is the other memory."""
    a, b = _weights(1), _weights(2)
    g = torch.rand(2, 2, dtype=torch.float64)
    got = _evaluate("g * A + (1 - g) * B", {"A": a, "B": b, "g": g}, ("A", "B"))
    for w, wa, wb in zip(got, a, b):
        torch.testing.assert_close(w, g[..., None, None] * wa + (1 - g[..., None, None]) * wb,
                                   rtol=0, atol=1e-15)


def test_a_channel_gate_scales_inputs_of_the_first_layer_and_outputs_of_the_last():
    """[3] gate on 3 -> 12 -> 3: W_1 [12, 3] diag(g) (columns), diag(g) W_2 [3, 12] (rows)."""
    w1, w2 = _weights(3)
    g = torch.rand(2, 2, 3, dtype=torch.float64)                        # [B, H, head_dim]
    flat = layerwise.channel_gate(LAYOUT, g, HEADS) * mlp.flatten(LAYOUT, (w1, w2))
    got1, got2 = mlp.layers(LAYOUT, flat)
    torch.testing.assert_close(got1, w1 * g[..., None, :], rtol=0, atol=0)
    torch.testing.assert_close(got2, g[..., :, None] * w2, rtol=0, atol=0)


def test_one_number_per_head_passes_through_the_channel_gate():
    g = torch.rand(2, 2, dtype=torch.float64)                           # [B, H]: rank 0
    assert layerwise.channel_gate(LAYOUT, g, HEADS) is g
    width_one = g.unsqueeze(-1)                                         # [B, H, 1]
    assert layerwise.channel_gate(LAYOUT, width_one, HEADS) is width_one
    assert layerwise.channel_gate(LAYOUT, 0.5, HEADS) == 0.5


def test_a_gate_of_no_layers_width_is_refused():
    with pytest.raises(ValueError, match="width 5"):
        layerwise.channel_gate(LAYOUT, torch.ones(2, 2, 5), HEADS)


@pytest.mark.parametrize("width, scaled", [pytest.param(4, "columns", id="d_k-columns"),
                                           pytest.param(6, "rows", id="d_v-rows")])
def test_a_matrix_gate_scales_columns_or_rows(width, scaled):
    m = torch.randn(2, 2, 6, 4, dtype=torch.float64)                    # [B, H, d_v, d_k]
    g = torch.rand(2, 2, width, dtype=torch.float64)
    factor = layerwise.matrix_gate(g, (6, 4), HEADS)
    expected = m * g[..., None, :] if scaled == "columns" else m * g[..., :, None]
    torch.testing.assert_close(HEADS.align(factor, m)[0] * m, expected, rtol=0, atol=0)


NORMED = MLPLayout((3, 12, 3), "gelu", True, norm=True)   # `layernorm`: gamma [3] after the layers


def test_a_channel_gate_scales_layernorm_gamma_by_its_channels():
    """gamma [d_L] is a weight of output channels: g * gamma (tests/test_fuzz_deep.py FOUND
    "layernorm-channel-gate": the gate once lacked gamma's part, a shape error)."""
    weights = mlp.initial(NORMED, (2, 2), torch.float64)
    weights = weights[:-1] + (torch.rand(2, 2, 3, dtype=torch.float64),)    # a nonzero gamma
    g = torch.rand(2, 2, 3, dtype=torch.float64)                        # [B, H, head_dim]
    flat = layerwise.channel_gate(NORMED, g, HEADS) * mlp.flatten(NORMED, weights)
    *_, got = mlp.layers(NORMED, flat)
    torch.testing.assert_close(got, g * weights[-1], rtol=0, atol=0)


def test_a_per_weight_expression_acts_on_layernorm_gamma_too():
    """`0.9 * A + B` on a layernorm memory: every weight, gamma included (FOUND
    "layernorm-explicit-update": gamma's part was left out, a shape error)."""
    a = mlp.initial(NORMED, (2, 2), torch.float64)
    b = tuple(torch.rand_like(w) for w in a)
    flat = {"A": mlp.flatten(NORMED, a), "B": mlp.flatten(NORMED, b)}
    got = mlp.layers(NORMED, layerwise.evaluate(NORMED, parse_expr("0.9 * A + B"), HEADS,
                                                flat.__getitem__, None, None, {"A", "B"}))
    assert len(got) == 3
    for w, wa, wb in zip(got, a, b):
        torch.testing.assert_close(w, 0.9 * wa + wb, rtol=0, atol=1e-15)
