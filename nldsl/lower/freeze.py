"""A program whose levels never write: the network with every fast state constant.

Freezing is a transform of the Program (torch-free): each level keeps its states, hidden
buffers and reads, and loses its writes, its task writes (so `nldsl.stream` finds no level to
teach) and its rule-step schedule (`once`; `chunk` 1: with no writes, a `before write` read is
of the state as it is). What remains is an ordinary network of the outer parameters and the
states it is given: y_t = out(x_t, reads of S) with S the state at the call's start, the same
for every token, whatever the level's period or chunk. The state keeps its entries (the frozen
module takes and returns a stream's state unchanged but for `t` and the caches), so a stream can
go from the learning network to the frozen one and back.
"""
from __future__ import annotations

from dataclasses import replace

from nldsl.lower.program import Program


def freeze(program: Program) -> Program:
    """The program with every level's writes dropped (docstring above)."""
    levels = [replace(level, writes=[], task=(), once=False, chunk=1) for level in program.levels]
    return replace(program, levels=levels)
