"""The task driver's view of a network's state (nldsl/module/task_state.py): without outer
gradients no segment's graph outlives it, except a segment a call's end cuts where a later
call's loss can still reach its task states (`carries_graph`): then the graph goes on to the
next call, and goes at the segment's end."""
from __future__ import annotations

import pytest
import torch

import nldsl
from nldsl.module.task import task_levels
from nldsl.module.task_state import carries_graph

VOCAB = 7
HOPE = dict(period_slow=8, period_mid=4, period_fast=2, chunk_memory=2, chunk_projections=2,
            lr_slow=0.05, lr_mid=0.05, lr_fast=0.05)
CMS = dict(period_slow=8, period_mid=4, period_fast=2, expansion=2)


def network(spec, depth, hparams):
    torch.manual_seed(3)
    return nldsl.lm(spec, vocab_size=VOCAB, dim=8, depth=depth, **hparams).double()


def tokens(steps):
    stream = torch.randint(0, VOCAB, (1, steps + 1), generator=torch.Generator().manual_seed(4))
    return stream[:, :-1], stream[:, 1:]


def graphs(state) -> list[tuple]:
    """(block, level, entry) of every state tensor that holds a graph."""
    return [(b, level, name) for b, own in enumerate(state) for level, entries in own.items()
            for name, value in entries.items()
            if any(isinstance(v, torch.Tensor) and v.requires_grad
                   for v in (value if isinstance(value, tuple) else (value,)))]


@pytest.mark.parametrize("spec, depth, hparams", [
    pytest.param("hope", 2, HOPE, id="hope-depth-2"),
    pytest.param("cms", 2, CMS, id="cms-depth-2")])
def test_a_stream_ending_on_a_write_keeps_no_graph(spec, depth, hparams):
    """Hope's self-modifying memories write with autograd on inside the driver; their states
    used to keep every segment's graph, so memory grew with the stream."""
    model = network(spec, depth, hparams)
    inputs, targets = tokens(8)
    with torch.no_grad():
        _, state = nldsl.stream(model, inputs, targets, end=False)
    assert graphs(state) == []
    assert not carries_graph(task_levels(model), state)


def test_a_cut_segment_carries_its_graph_to_the_next_call_only():
    """Cut inside a period of the first block's CMS levels (periods 2, 4, 8 at token 3),
    whose output the second block's memories and convs read: the state carries the segment's
    graph; the next call, ending on a write, drops it."""
    model = network("hope", 2, HOPE)
    inputs, targets = tokens(8)
    with torch.no_grad():
        _, state = nldsl.stream(model, inputs[:, :3], targets[:, :3], end=False)
        carried = graphs(state)
        _, state = nldsl.stream(model, inputs[:, 3:], targets[:, 3:], state, end=False)
    assert (1, "memory", "M_memory") in carried
    assert graphs(state) == [] and not carries_graph(task_levels(model), state)


def test_a_cut_without_a_downstream_reader_keeps_no_graph():
    """A CMS network's levels feed no written level, conv or attention: nothing after the cut
    can reach the segment's states, so nothing is carried."""
    model = network("cms", 2, CMS)
    inputs, targets = tokens(8)
    with torch.no_grad():
        _, state = nldsl.stream(model, inputs[:, :3], targets[:, :3], end=False)
    assert graphs(state) == []
