"""A titans_pytorch stream cut inside a chunk, against the library. titans_pytorch.NeuralMemory
caches a trailing partial chunk and stores it when a later call completes it; the compiled
spec keeps the chunk's pending gradients in its state when a call passes `end=False`. The
final memory and momentum after the cut stream are the library's (and one call's). The outputs
are one call's: the library's second call aligns its retrieval chunks to that call's first
token rather than to the stream's, so its outputs after a cut inside a chunk differ from its
own one-call outputs (docs/modules.md, "titans-pytorch, exactly")."""
from __future__ import annotations

import pytest
import torch

from _neural_memory import DT, randomized_neural_memory
from test_titans_pytorch_compat import TOL, compiled_copy

pytest.importorskip("titans_pytorch")      # the `peers` extra; .ci/run installs it

CASES = [
    # id, (B, T, dim, heads, dim_head, chunk, batch_size, cut)
    pytest.param((2, 11, 8, 2, 4, 3, None, 5), id="default-T11-chunk3-cut5"),
    pytest.param((2, 11, 8, 2, 4, 3, 3, 4), id="batch=chunk-T11-chunk3-cut4"),
    pytest.param((1, 13, 8, 2, 4, 2, 4, 7), id="batch=2chunks-T13-chunk2-cut7"),
    pytest.param((1, 9, 4, 1, 4, 2, None, 3), id="heads1-T9-chunk2-cut3"),
]


@pytest.mark.parametrize("schedule", ["reference", "chunked"])
@pytest.mark.parametrize("case", CASES)
def test_a_stream_cut_inside_a_chunk_stores_what_the_library_stores(case, schedule):
    batch, steps, dim, heads, dim_head, chunk, batch_size, cut = case
    mem = randomized_neural_memory(7, dim, heads, dim_head, chunk, batch_size)
    module, _ = compiled_copy(mem, schedule, dim, heads, dim_head, chunk, batch_size)
    x = torch.randn(batch, steps, dim, generator=torch.Generator().manual_seed(1), dtype=DT)
    with torch.no_grad():
        y_whole, _ = mem(x)
        _, first = mem(x[:, :cut])
        _, lib_state = mem(x[:, cut:], state=first)
        y1, state = module(x[:, :cut], end=False)
        y2, state = module(x[:, cut:], state)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_whole, **TOL)
    last_update, last_momentum = lib_state.states
    part = lambda n: -1 if n == "norm.gamma" else int(n.rsplit(".", 1)[1])
    layout = lambda w: w if w.dim() == 3 else w.transpose(-1, -2)    # gamma [B, H, d] as is
    for n in mem.memory_model_parameter_names:
        for mine, lib in ((state["memory"]["M"], last_update[n]),
                          (state["memory"]["M_momentum"], last_momentum[n][0])):
            torch.testing.assert_close(layout(mine[part(n)]).flatten(0, 1), lib, **TOL, msg=n)
