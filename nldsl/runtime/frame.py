"""Frames: how the leading dims of a batched value are laid out, and the head split and merge.

An expression describes one unit (one token, one head). Evaluated for many at once, every tensor
carries `nb` leading batch dims before its value dims:

    frame          batch dims                 a key k (value [d])     a matrix memory M
    per token      [B]                        [B, d]                  -
    per sequence   [B, T]                     [B, T, d]               -
    per head       [B, (T,) H]                [B, (T,) H, d]          [B, H, d_v, d_k]

Parameters (the outer level's states) enter lifted: size-1 batch dims, so torch broadcasting
aligns them. In a per-head frame a value whose head axis has size 1 is *unsplit* (the same for
every head: `x`, a projection `x @ Wk` before a function is applied to it); a value with a head
axis of size H is split. docs/language.md, "Heads": a tensor of width H * d is seen as H heads of
width d before a function is applied to it, and a gate of width H is one scalar per head.
With head_dim 1 the two coincide: `split` gives the scalar, `vector` turns it back into width 1
where a vector is needed, and `split_as` applies the lowering's recorded split of a context
(nldsl/lower/heads.py decides by use, with the same rules).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Frame:
    """`prefix` batch dims (1: B, 2: B and T), then a head axis when `heads` is not None."""

    prefix: int
    heads: int | None = None

    @property
    def nb(self) -> int:
        return self.prefix + (self.heads is not None)

    def rank(self, value) -> int:
        """The value rank: dims after the batch dims (0 for a number)."""
        return value.ndim - self.nb if isinstance(value, torch.Tensor) else 0

    def lift(self, param: torch.Tensor) -> torch.Tensor:
        """A parameter (no batch dims) as a value of this frame: size-1 batch dims."""
        return param.reshape((1,) * self.nb + tuple(param.shape))

    def is_split(self, value) -> bool:
        return (self.heads is not None and isinstance(value, torch.Tensor)
                and value.shape[self.prefix] == self.heads and self.heads > 1)

    def split(self, value):
        """[.., 1, .., H*d] -> [.., H, .., d]; width H becomes one scalar per head. A value whose
        width is not a multiple of H stays unsplit (it broadcasts over the heads)."""
        h = self.heads
        if h is None or not isinstance(value, torch.Tensor) or self.rank(value) == 0:
            return value
        if self.is_split(value) or value.shape[-1] % h:
            return value
        if h == 1:                       # already [.., 1, ..., d]; a gate of width 1 is a scalar
            return value.squeeze(-1) if value.shape[-1] == 1 and self.rank(value) == 1 else value
        width = value.shape[-1] // h
        shaped = value.reshape(*value.shape[:-1], h, width)           # [.., 1, V.., H, d]
        shaped = shaped.movedim(-2, self.prefix).squeeze(self.prefix + 1)  # [.., H, V.., d]
        return shaped.squeeze(-1) if width == 1 and self.rank(value) == 1 else shaped

    def vector(self, value):
        """A value where a vector is needed (a memory's input, `outer`, `concat`, an index, a
        last-dim function, a split operand of `@`): in a per-head frame, one scalar per head is
        a vector of width 1 there ([.., H] -> [.., H, 1]). With head_dim 1 a width H * 1 is
        both H heads of width 1 and one scalar per head; the use decides, as in
        nldsl/lower/heads.py."""
        if self.heads is not None and isinstance(value, torch.Tensor) and self.rank(value) == 0 \
                and value.ndim >= self.nb:
            return value.unsqueeze(-1)
        return value

    def split_as(self, value, heads: int, width: int | None):
        """The lowering's recorded split of a context (`HeadSplit(name, heads, width)`):
        `width` None is one scalar per head, `width` 1 H heads of width 1."""
        value = self.split(value)
        if not isinstance(value, torch.Tensor) or self.heads is None:
            return value
        rank = self.rank(value)
        if width is None and rank == 1 and value.shape[-1] == 1:
            return value.squeeze(-1)
        if width == 1 and rank == 0:
            return value.unsqueeze(-1)
        return value

    def split_like(self, value, other):
        """Split `value` if `other` is split and `value` is not, unless the widths already
        agree (a [head_dim] parameter broadcasts over the heads)."""
        if not self.is_split(other) or self.is_split(value) or self.rank(value) == 0:
            return value
        other_width = other.shape[-1] if self.rank(other) else 1
        if value.shape[-1] == other_width and self.rank(other):
            return value
        return self.split(value)

    def merge(self, value, into: "Frame"):
        """A value of this frame seen from `into` (a frame of the same prefix): heads merged
        back to width H * d (a scalar per head to width H), then lifted into `into`'s heads."""
        if not isinstance(value, torch.Tensor):
            return value
        if self.heads is not None:
            value = self._merged(value)
        if into.heads is not None:
            value = value.unsqueeze(into.prefix)
        return value

    def _merged(self, value: torch.Tensor) -> torch.Tensor:
        if self.rank(value) == 0 and (self.heads == 1 or value.shape[self.prefix] == self.heads):
            return value                                            # [.., H]: width H
        if value.shape[self.prefix] == 1:
            return value.squeeze(self.prefix)
        moved = value.movedim(self.prefix, -2)                      # [.., V.., H, d]
        return moved.reshape(*moved.shape[:-2], moved.shape[-2] * moved.shape[-1])

    def align(self, a, b):
        """Pad the operand of lower value rank with size-1 value dims, so that elementwise ops
        broadcast value dims right-aligned and batch dims left-aligned."""
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return a, b
        a, b = self.split_like(a, b), self.split_like(b, a)
        ra, rb = self.rank(a), self.rank(b)
        nb = self.nb
        if ra < rb:
            a = a.reshape(*a.shape[:nb], *(1,) * (rb - ra), *a.shape[nb:])
        elif rb < ra:
            b = b.reshape(*b.shape[:nb], *(1,) * (ra - rb), *b.shape[nb:])
        return a, b

    def value_dims(self, value: torch.Tensor) -> tuple[int, ...]:
        return tuple(range(self.nb, value.ndim))
