"""module/periodic_chunk.py: the periodic form of a `once` level equals the reference schedule.

Outputs, final states (weights by layer, momentum, chunk-start snapshot, pending sums) and the
gradients of x and of every parameter, in float64, for titans_pytorch (heads 2 and 3) and
titans_pytorch_single_head in both gradient-base modes (batch_size 0: every gradient at the
initial weights; batch_size a multiple of the chunk), odd T and T that the period does not
divide, a stream cut anywhere, and a user spec of the same structure under other names (the
gradient rule, no `layernorm`, a chunk of two periods and the default chunk (one period),
`partial flush`, without `backprop`, without heads). Tolerance: `deep_bound` of
tests/test_module_deep_memories.py (the same real function, sums associated differently);
gradients pass twice through it. With `checkpoint` (regions of whole periods recomputed in the
backward pass) the same values and gradients as without, to a bound linear in T (the same
operations), also across a cut stream, and a fraction of the bytes held for backward.
"""
from __future__ import annotations

import pytest
import torch

import nldsl
from _module_cases import U64, assert_close, assert_states_close, flat_layers, \
    forbid_fallback, inputs, randomize, stream_in_parts
from nldsl.lower.periodic_forms import PeriodicForm
from nldsl.module import periodic_chunk
from test_module_deep_memories import deep_bound

USER = """module periodic_user(dim: int >= 1, head_dim = 3 >= 1) {{
  state Wk : [dim, {heads} * head_dim] = normal(0.5)
  state Wv : [dim, {heads} * head_dim] = normal(0.5)
  state Wq : [dim, {heads} * head_dim] = normal(0.5)
  state W_lr : [dim{gate}] = normal(0.5)
  state W_keep : [dim{gate}] = normal(0.5)
  state W_out : [{heads} * head_dim, dim] = normal(0.5)
  level memory every 4 tokens {chunk} {head_clause} {backprop} partial {partial} once {{
    state M : mlp(head_dim -> 2 * head_dim -> head_dim, silu) init learned
    key   k = x @ Wk
    value v = x @ Wv
    query q = x @ Wq
    gate  rate = sigmoid(period_mean(x @ W_lr))
    gate  keep = sigmoid(x @ W_keep)
    minimize l2(M(k), v) by gd(lr = rate, decay = keep)
    read y = M(q)
  }}
  out = y @ W_out
}}"""


def titans_pytorch(schedule: str, heads: int, chunk: int, batch_size: int,
                   checkpoint: bool = False, block_size: int = 64):
    sizes = dict(dim=8, chunk_size=chunk, batch_size=batch_size, max_lr=0.5,
                 checkpoint=checkpoint, block_size=block_size)
    if heads == 1:
        return nldsl.compile("titans_pytorch_single_head", schedule=schedule, **sizes)
    return nldsl.compile("titans_pytorch", schedule=schedule, heads=heads, head_dim=3, **sizes)


def user(schedule: str, heads: int | None, partial: str, backprop: bool,
         checkpoint: bool = False, block_size: int = 64):
    text = USER.format(heads=heads or 1, head_clause=f"heads {heads}" if heads else "",
                       chunk="chunk 8" if heads else "", gate=f", {heads}" if heads else "",
                       backprop="backprop" if backprop else "", partial=partial)
    return nldsl.compile(text, schedule=schedule, dim=8, checkpoint=checkpoint,
                         block_size=block_size)


def pair(make, *args, seed: int = 3):
    """The module in both schedules, float64, the same O(1) parameters (_module_cases)."""
    return [randomize(make(schedule, *args).double(), seed) for schedule in ("reference",
                                                                             "chunked")]


CASES = [
    pytest.param(titans_pytorch, (2, 3, 0), 11, 2, id="titans_pytorch-heads2-chunk3-default-T11"),
    pytest.param(titans_pytorch, (2, 3, 6), 13, 2, id="titans_pytorch-heads2-chunk3-batch6-T13"),
    pytest.param(titans_pytorch, (3, 2, 4), 9, 1, id="titans_pytorch-heads3-chunk2-batch4-T9"),
    pytest.param(titans_pytorch, (2, 1, 0), 5, 2, id="titans_pytorch-heads2-chunk1-T5"),
    pytest.param(titans_pytorch, (1, 3, 0), 8, 2, id="single_head-chunk3-default-T8"),
    pytest.param(titans_pytorch, (1, 2, 4), 7, 1, id="single_head-chunk2-batch4-T7"),
    pytest.param(user, (2, "flush", True), 11, 2, id="user-heads2-flush"),
    pytest.param(user, (None, "drop", True), 9, 2, id="user-no-heads-drop"),
    pytest.param(user, (2, "flush", False), 7, 2, id="user-heads2-writes-detached"),
]


def run(m, x: torch.Tensor):
    """(y, flat state, gradients of x and every parameter) of a probe loss on y."""
    y, state = m(x)
    loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum()
    grads = torch.autograd.grad(loss, [x] + list(m.parameters()), allow_unused=True)
    return y, flat_layers(state), grads


@pytest.mark.parametrize("make, args, steps, batch", CASES)
def test_chunked_equals_reference(make, args, steps, batch, monkeypatch):
    reference, chunked = pair(make, *args)
    assert isinstance(chunked.fast_paths["memory"], PeriodicForm)
    forbid_fallback(monkeypatch)
    x = inputs(batch, steps, 8, 1).requires_grad_()
    bound = deep_bound(steps, 12)
    assert_runs_close(run(chunked, x), run(reference, x), reference, bound, 2 * bound, "periodic")


@pytest.mark.parametrize("make, args, steps, batch", CASES[:3] + CASES[6:7])
def test_without_gradients(make, args, steps, batch, monkeypatch):
    """Under no_grad the chunked schedule takes its projections as one GEMM (chunked.py's
    `project`): the period means see those products too."""
    reference, chunked = pair(make, *args)
    forbid_fallback(monkeypatch)
    x = inputs(batch, steps, 8, 2)
    with torch.no_grad():
        (y_r, s_r), (y_c, s_c) = reference(x), chunked(x)
    bound = deep_bound(steps, 12)
    assert_close(y_c, y_r, bound, "y")
    assert_states_close(flat_layers(s_c), flat_layers(s_r), bound, "periodic")


CUTS = [pytest.param((2, 5), id="mid-period"), pytest.param((3, 6), id="period-ends"),
        pytest.param((1, 2, 3, 4, 5, 6, 7, 8), id="every-token")]


@pytest.mark.parametrize("end", [pytest.param(False, id="continued"),
                                 pytest.param(True, id="ended")])
@pytest.mark.parametrize("cuts", CUTS)
@pytest.mark.parametrize("make, args", [pytest.param(titans_pytorch, (2, 3, 6), id="batch6"),
                                        pytest.param(titans_pytorch, (2, 3, 0), id="default"),
                                        pytest.param(user, (2, "flush", True), id="user")])
def test_a_cut_stream_equals_the_reference(make, args, cuts, end, monkeypatch):
    """Each part a call (end=False: the pending sum, rule arguments and period means travel in
    the state; end=True: each part ends the sequence, its trailing partial period dropped or
    flushed): the chunked schedule gives the reference's outputs and states part by part."""
    reference, chunked = pair(make, *args)
    forbid_fallback(monkeypatch)
    x = inputs(2, 10, 8, 3)
    results = []
    with torch.no_grad():
        for m in (reference, chunked):
            if end:
                parts, state, start = [], None, 0
                for stop in cuts + (x.shape[1],):
                    part, state = m(x[:, start:stop], state)
                    parts.append(part)
                    start = stop
                results.append((torch.cat(parts, 1), state))
            else:
                results.append(stream_in_parts(m, x, cuts))
    (y_r, s_r), (y_c, s_c) = results
    bound = deep_bound(10, 12)
    assert_close(y_c, y_r, bound, "y")
    assert_states_close(flat_layers(s_c), flat_layers(s_r), bound, "periodic")


def checkpoint_bound(steps: int, width: int, passes: int = 1) -> float:
    """|checkpointed - kept| / scale for the same operations associated differently: under
    `checkpoint` each region's loss is a batch of its own tokens instead of the chunk's and
    each region's backward adds its contributions to the gradients separately, so every entry is
    the same sum of at most `steps` tokens' terms, each an inner product of `width` and a few
    roundings: 2 steps (width + 3) u per evaluation (Higham's gamma_n, as `rounding_bound`),
    times 4 for the elementwise ops around the memory and `passes` for gradients. A wrong
    state, snapshot or carried sum fed to a recomputed region errs by O(1e-1)."""
    return 2 * 4 * passes * steps * (width + 3) * U64


def assert_runs_close(actual, expected, module, bound: float, grad_bound: float, what: str):
    """Two runs' (y, flat state, gradients of x and of `module`'s parameters) agree: y and
    the states to `bound`, the gradients to `grad_bound` (assert_gradients_close)."""
    (y_a, s_a, g_a), (y_e, s_e, g_e) = actual, expected
    assert_close(y_a, y_e, bound, "y")
    assert_states_close(s_a, s_e, bound, what)
    names = ["x"] + [n for n, _ in module.named_parameters()]
    assert_gradients_close(g_a, g_e, names, grad_bound)


def assert_gradients_close(actual, expected, names, bound: float) -> None:
    """Each gradient finite, shaped as expected and within `bound` of the module's largest
    gradient entry: a gradient is a sum over tokens and heads that can cancel (b_lr's: the
    gate's effects on the loss nearly balance), so its rounding is relative to the terms, each
    at most that entry, not to the sum."""
    scale = max(g.abs().max().item() for g in expected if g is not None)
    for name, a, b in zip(names, actual, expected):
        assert (a is None) == (b is None), name
        if b is not None:
            assert a.shape == b.shape and torch.isfinite(a).all(), name
            error = (a - b).abs().max().item()
            assert error <= bound * scale, f"grad {name}: {error:.3e} > {bound:.3e} x {scale:.3e}"


# block_size: the region's length, rounded up to whole periods (1: one period per region)
CHECKPOINT_CASES = [
    pytest.param(titans_pytorch, (2, 3, 0), 13, 2, 1,
                 id="titans_pytorch-heads2-chunk3-default-T13-block1"),
    pytest.param(titans_pytorch, (2, 3, 0), 13, 2, 7,
                 id="titans_pytorch-heads2-chunk3-default-T13-block7"),
    pytest.param(titans_pytorch, (2, 3, 6), 13, 2, 1,
                 id="titans_pytorch-heads2-chunk3-batch6-T13-block1"),
    pytest.param(titans_pytorch, (2, 3, 6), 13, 2, 12,
                 id="titans_pytorch-heads2-chunk3-batch6-T13-block12"),
    pytest.param(titans_pytorch, (3, 2, 4), 9, 1, 1,
                 id="titans_pytorch-heads3-chunk2-batch4-T9-block1"),
    pytest.param(titans_pytorch, (2, 1, 0), 7, 2, 1, id="titans_pytorch-heads2-chunk1-T7-block1"),
    pytest.param(titans_pytorch, (1, 3, 0), 11, 2, 4, id="single_head-chunk3-default-T11-block4"),
    pytest.param(user, (2, "flush", True), 11, 2, 1, id="user-heads2-chunk8-flush-T11-block1"),
    pytest.param(user, (None, "drop", True), 9, 2, 1, id="user-no-heads-drop-T9-block1"),
]


def kept_and_checkpointed(make, args, block_size: int):
    """The chunked module without and with `checkpoint`, float64, the same parameters."""
    return [randomize(make("chunked", *args, checkpoint=checkpoint,
                           block_size=block_size).double(), 3)
            for checkpoint in (False, True)]


@pytest.mark.parametrize("make, args, steps, batch, block_size", CHECKPOINT_CASES)
def test_checkpoint_gives_the_same_values_and_gradients(make, args, steps, batch, block_size,
                                                        monkeypatch):
    """With `checkpoint` each region (whole periods of one chunk) is recomputed in the backward
    pass: outputs, final states and the gradients of x and every parameter are the plain
    run's."""
    kept, checkpointed = kept_and_checkpointed(make, args, block_size)
    assert isinstance(checkpointed.fast_paths["memory"], PeriodicForm)
    forbid_fallback(monkeypatch)
    x = inputs(batch, steps, 8, 1).requires_grad_()
    assert_runs_close(run(checkpointed, x), run(kept, x), kept, checkpoint_bound(steps, 12),
                      checkpoint_bound(steps, 12, passes=2), "checkpoint")


def test_checkpoint_continues_a_cut_stream(monkeypatch):
    """Two calls (end=False on the first) with gradients through the state between them, the
    cut mid-period and mid-chunk (chunk 3, batch_size 6, one period per region): the second
    call's first region starts from the carried gradient sum and the first call's chunk-start
    snapshot."""
    kept, checkpointed = kept_and_checkpointed(titans_pytorch, (2, 3, 6), 1)
    forbid_fallback(monkeypatch)
    x = inputs(2, 13, 8, 4).requires_grad_()
    results = []
    for m in (kept, checkpointed):
        first, state = m(x[:, :5], end=False)
        second, state = m(x[:, 5:], state)
        y = torch.cat([first, second], 1)
        loss = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum()
        results.append((y, flat_layers(state),
                        torch.autograd.grad(loss, [x] + list(m.parameters()), allow_unused=True)))
    assert_runs_close(results[1], results[0], kept, checkpoint_bound(13, 12),
                      checkpoint_bound(13, 12, passes=2), "cut checkpoint")


@pytest.mark.parametrize("block_size", [pytest.param(16, id="block16"),
                                        pytest.param(64, id="block64")])
@pytest.mark.parametrize("batch_size", [pytest.param(0, id="default"),
                                        pytest.param(32, id="batch32")])
def test_checkpoint_keeps_a_fraction_of_the_memory(batch_size, block_size, monkeypatch):
    """Bytes held for the backward pass: the storages autograd saves outside the checkpointed
    regions (saved_tensors_hooks) plus the regions' arguments (each region's start state and
    momentum, which `checkpoint` holds), against all that the plain run saves, at 8 periods
    of 16 tokens and a partial one, heads 2 of 4. A region is `block_size` tokens inside a
    chunk (batch_size 32: chunks of two periods): 9 of one period, 5 or 3 of up to four. One
    period's factors, reads and inner graph outweigh its state several times (measured:
    5.0x and 6.7x (default), 4.6x and 5.6x (batch_size 32); at dim 256, 4 heads of 64, T 1024:
    docs/modules.md). Not counted: the layer inputs torch's checkpoint recomputes in the
    forward pass for the inner backward and keeps (its private frames; with them 4.3x, 5.9x,
    4.1x, 4.9x by benchmarks/bench_periodic_memory.py)."""
    steps, period = 8 * 16 + 5, 16
    chunk = batch_size or steps
    held, regions, checkpoint_of = {}, [], periodic_chunk.checkpoint

    def count(where):
        def pack(t):
            storage = t.untyped_storage()
            where[storage.data_ptr()] = storage.nbytes()
            return t
        return pack

    def recording(region, *args, **kwargs):        # the arguments `checkpoint` holds
        for arg in args:
            for t in arg if isinstance(arg, tuple) else (arg,):
                if isinstance(t, torch.Tensor):
                    count(held)(t)
        regions.append(region)
        return checkpoint_of(region, *args, **kwargs)

    monkeypatch.setattr(periodic_chunk, "checkpoint", recording)
    totals = []
    for checkpoint in (False, True):
        m = nldsl.compile("titans_pytorch", dim=8, heads=2, head_dim=4, chunk_size=period,
                          batch_size=batch_size, block_size=block_size,
                          checkpoint=checkpoint).double()
        saved = {}
        held.clear()
        regions.clear()
        with torch.autograd.graph.saved_tensors_hooks(count(saved), lambda t: t):
            m(inputs(2, steps, 8, 5))
        assert len(regions) == (-(-steps // min(chunk, block_size)) if checkpoint else 0)
        totals.append(sum(saved.values()) + sum(held.values()))
    kept, checkpointed = totals
    assert 4 * checkpointed < kept, (kept, checkpointed)


def test_a_width_one_gate_pending_at_a_cut_is_kept_as_the_reference_keeps_it(monkeypatch):
    """Without heads, gates of width 1 (x @ W, W [dim, 1]): a call ending mid-period leaves
    the rule's arguments [B, 1] in the state, as the reference keeps them (tests/test_fuzz_deep.py
    found them kept as [B], which a later call broadcasts differently)."""
    text = USER.format(heads=1, head_clause="", chunk="", gate=", 1", backprop="backprop",
                       partial="flush")
    reference, chunked = [randomize(nldsl.compile(text, schedule=s, dim=8).double(), 3)
                          for s in ("reference", "chunked")]
    assert isinstance(chunked.fast_paths["memory"], PeriodicForm)
    forbid_fallback(monkeypatch)
    x = inputs(2, 10, 8, 3)
    with torch.no_grad():
        (y_r, s_r), (y_c, s_c) = (stream_in_parts(m, x, (2, 5)) for m in (reference, chunked))
    assert_close(y_c, y_r, deep_bound(10, 12), "y")
    assert_states_close(flat_layers(s_c), flat_layers(s_r), deep_bound(10, 12), "periodic")
