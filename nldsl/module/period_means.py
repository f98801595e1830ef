"""`period_mean(a)` in the chunked schedule: the reference's running mean over its level's
period so far (module/unit.py), for a whole call at once, by a cumulative sum per period; the
sum a cut stream left in the state continues it. Used by the levels that write every N > 1
tokens: the periodic form (periodic_chunk.py) and the frozen form of a task level (chunked.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nldsl.language import ast
from nldsl.language.consteval import calls_in
from nldsl.lower.program import TokenLevel
from nldsl.runtime.evaluate import FrameEvaluator


def group_by_period(a: torch.Tensor, offset: int, period: int) -> torch.Tensor:
    """Tokens [B, H, L, d] as groups of `period` [B, H, g, N, d], `offset` zero rows first and
    zero rows at the end (a zero row adds nothing to a period's sum, nor is it ever read)."""
    total = -(-(offset + a.shape[-2]) // period) * period
    if total != a.shape[-2]:                 # (a pad copies even when it adds nothing)
        a = F.pad(a, (0, 0, offset, total - offset - a.shape[-2]))
    return a.unflatten(-2, (total // period, period))


def bind_period_means(values, level: TokenLevel, own: dict, start: int) -> None:
    """Memoise the level's contexts that call `period_mean` with the reference's running means
    (module/unit.py): at call token i, (sum of a over the period's tokens up to i, plus the sum
    a cut stream left) / ((start + i) mod N + 1); the running sum at the last token goes to the
    state, as `period_mean@line:col.pending`."""
    frame, period = values.frames[level.name], level.period
    direct = [n for n, e in level.contexts.items()
              if any(c.func == "period_mean" for c in calls_in(e))]
    steps, done = values.x.shape[1], {}

    def mean(call: ast.Call, a):
        site = (call.span.line, call.span.col)
        if site not in done:
            key = f"period_mean@{site[0]}:{site[1]}.pending"
            bsz = values.x.shape[0]
            a = torch.as_tensor(a, dtype=values.x.dtype, device=values.x.device)
            a = a.expand((bsz, steps) + a.shape[2:]) if a.ndim >= 2 else a.expand(bsz, steps)
            offset = start % period
            grouped = group_by_period(a.reshape(bsz, steps, -1), offset, period)      # [B, g, N, R]
            running = grouped.cumsum(-2).flatten(-3, -2)[:, offset:offset + steps]
            running = running.reshape(a.shape)                              # [B, T, ...]
            carry = own.get(key)
            if offset and carry is not None:
                head = min(period - offset, steps)
                running = torch.cat([running[:, :head] + carry.unsqueeze(1), running[:, head:]], 1)
            count = (torch.arange(steps, device=a.device) + start) % period + 1
            own[key] = running[:, -1]
            done[site] = running / count.to(a.dtype).view((1, steps) + (1,) * (a.ndim - 2))
        return done[site]

    def lookup(name: str):
        if name in direct and name not in values.memo:
            values.memo[name] = (evaluator(level.contexts[name]), frame)
        return values._lookup(name, frame)

    evaluator = _ProductEvaluator(frame, lookup, values, mean)
    for name in direct:
        lookup(name)


class _ProductEvaluator(FrameEvaluator):
    """The chunked schedule's evaluator with `period_mean`: a precomputed `x @ W` product
    (chunked.py's `project`) is taken as is."""

    def __init__(self, frame, lookup, values, period_mean):
        super().__init__(frame, lookup, _no_memory, lambda call, a, w: values._conv(call, a, frame),
                         attend=lambda call, q, k, v: values._attend(call, q, k, v, frame),
                         period_mean=period_mean)
        self.products = values.products

    def __call__(self, expr: ast.Expr):
        product = self.products.get(id(expr))
        return product if product is not None else super().__call__(expr)


def _no_memory(name, u):
    raise KeyError(f"memory {name} applied inside a context of its level")
