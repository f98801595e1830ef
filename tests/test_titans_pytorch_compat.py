"""The `titans_pytorch` specs against the library they copy: a randomized float64
titans_pytorch.NeuralMemory (v0.5.5, the `peers` extra), its weights copied into
`nldsl.compile("titans_pytorch", ...)` (`titans_pytorch_single_head` for heads = 1, which the
library builds without the retrieve gate and the combine), must give the library's output,
final memory and momentum, and gradients of x and of every parameter, in float64 to 1e-8,
in both schedules, in the default mode (batch_size None: every gradient at the initial
weights) and with batch_size a multiple of the chunk (Titans eq. 16), with T not a multiple of
the chunk (a trailing partial chunk). The chunked schedule runs the periodic form
(lower/periodic_forms.py), never the token loop.
"""
from __future__ import annotations

import pytest
import torch

import nldsl
import paper_loops as pl
from _module_cases import forbid_fallback
from _neural_memory import DT, randomized_neural_memory
from nldsl.lower.periodic_forms import PeriodicForm

pytest.importorskip("titans_pytorch")      # the `peers` extra; .ci/run installs it

TOL = dict(rtol=1e-8, atol=1e-10)

CASES = [
    # id, (B, T, dim, heads, dim_head, chunk, batch_size)
    pytest.param((2, 7, 8, 2, 4, 3, None), id="default-heads2-T7-chunk3"),
    pytest.param((2, 7, 8, 2, 4, 3, 3), id="batch=chunk-heads2-T7-chunk3"),
    pytest.param((1, 11, 9, 3, 3, 2, 4), id="batch=2chunks-heads3-T11-chunk2"),
    pytest.param((2, 5, 6, 2, 3, 1, None), id="default-heads2-chunk1"),
    pytest.param((1, 7, 4, 1, 4, 2, None), id="default-heads1-T7-chunk2"),
    pytest.param((2, 8, 4, 1, 4, 3, 3), id="batch=chunk-heads1-T8-chunk3"),
]
SCHEDULES = [pytest.param("reference", id="reference"), pytest.param("chunked", id="chunked")]


def library_tensors(mem) -> dict:
    """nldsl parameter name -> the library tensor it holds, in nldsl's layout (x @ W: the
    transpose of torch's Linear weight; the memory's parts per head as [H, d_out, d_in], gamma
    [H, d]). Attached to the library's parameters, so their gradients map the same way."""
    p = pl.titans_pytorch_params(mem)
    tensors = {"store_norm": p["store_norm"], "retrieve_norm": p["retrieve_norm"],
               **{name: p[name].T for name in ("Wq", "Wk", "Wv", "W_lr", "W_momentum",
                                               "W_decay")},
               **{name: p[name] for name in ("b_lr", "b_momentum", "b_decay")},
               "M_init_gamma": p["gamma"]}
    tensors |= {f"M_init_w{i + 1}": w for i, w in enumerate(p["layers"])}
    if mem.heads > 1:
        tensors |= {"W_gate": p["W_gate"].T, "W_out": p["W_out"].T}
    return tensors


def compiled_copy(mem, schedule: str, dim: int, heads: int, dim_head: int, chunk: int,
                  batch_size: int | None):
    """The spec compiled with the library's hyper-parameters and its weights copied in."""
    sizes = dict(dim=dim, chunk_size=chunk, batch_size=batch_size or 0,
                 max_lr=pl.titans_pytorch_params(mem)["max_lr"])
    if heads > 1:
        module = nldsl.compile("titans_pytorch", schedule=schedule, heads=heads,
                               head_dim=dim_head, **sizes)
    else:
        module = nldsl.compile("titans_pytorch_single_head", schedule=schedule, **sizes)
    module = module.double()
    tensors = library_tensors(mem)
    assert set(tensors) == {name for name, _ in module.named_parameters()}
    with torch.no_grad():
        for name, value in tensors.items():
            module.get_parameter(name).copy_(value)
    return module, tensors


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("case", CASES)
def test_titans_pytorch_spec_is_neural_memory(case, schedule, monkeypatch):
    batch, steps, dim, heads, dim_head, chunk, batch_size = case
    mem = randomized_neural_memory(7, dim, heads, dim_head, chunk, batch_size)
    module, tensors = compiled_copy(mem, schedule, dim, heads, dim_head, chunk, batch_size)
    if schedule == "chunked":        # through the periodic form (module/periodic_chunk.py)
        assert isinstance(module.fast_paths["memory"], PeriodicForm)
        forbid_fallback(monkeypatch)
    x = torch.randn(batch, steps, dim, generator=torch.Generator().manual_seed(1),
                    dtype=DT).requires_grad_()
    y_lib, lib_state = mem(x)
    y, state = module(x)
    torch.testing.assert_close(y, y_lib, **TOL)

    last_update, last_momentum = lib_state.states          # [(b h), ...]; momentum [o, (b h), ...]
    names = mem.memory_model_parameter_names                 # ['norm.gamma', 'model.weights.i']
    part = lambda n: -1 if n == "norm.gamma" else int(n.rsplit(".", 1)[1])
    layout = lambda w: w if w.dim() == 3 else w.transpose(-1, -2)    # gamma [B, H, d] as is
    for n in names:
        for mine, lib in ((state["memory"]["M"], last_update[n]),
                          (state["memory"]["M_momentum"], last_momentum[n][0])):
            torch.testing.assert_close(layout(mine[part(n)]).flatten(0, 1), lib, **TOL, msg=n)

    probe = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=DT)
    lib_params = [x] + list(mem.parameters())
    g_lib = dict(zip(["x"] + [n for n, _ in mem.named_parameters()],
                     torch.autograd.grad((y_lib * probe).sum(), lib_params, allow_unused=True)))
    mine = dict(module.named_parameters())
    g_mine = dict(zip(["x"] + list(mine), torch.autograd.grad((y * probe).sum(),
                                                              [x] + list(mine.values()))))
    torch.testing.assert_close(g_mine["x"], g_lib["x"], **TOL, msg="x")
    # a library parameter's gradient, seen through the map of library_tensors
    reach = {name: torch.autograd.grad(value, lib_params, grad_outputs=g_mine[name],
                                       allow_unused=True, retain_graph=True)
             for name, value in tensors.items()}
    for i, (lib_name, _) in enumerate(mem.named_parameters(), start=1):
        pulled = [r[i] for r in reach.values() if r[i] is not None]
        expected = g_lib[lib_name]
        if expected is None:
            assert not pulled, lib_name
            continue
        torch.testing.assert_close(sum(pulled), expected, **TOL, msg=lib_name)
