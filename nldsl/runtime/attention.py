"""Softmax attention over the stream with a key-value cache, and rotary position embeddings.

One definition, two computations (docs/modules.md, "Attention"). Token t (1-based position in
the stream) with query q_t attends to the keys and values it can see:

    o_t = sum_{j in V(t)} softmax_j(q_t . k_j / sqrt(d_k)) v_j

    V(t) = the prefix (persistent keys and values: every token sees them, at no position)
         + the stream's tokens s of every key-value stream with 1 <= s <= t and
             full      (attention):          no other condition        (NL eq. 62)
             window    (window_attention):    t - s < width             (NL eq. 63)
             segment   (segment_attention):  (s - 1) // size == (t - 1) // size   (Titans MAC)

The cache keeps what later tokens can see: every past key (full), or the last width - 1
positions (window, segment); entries before the stream's start (position <= 0) are zeros and
masked. With several streams (a tuple of keys), position s holds one entry per stream, in
stream order. `attend_token` is the reference schedule's step (one query, explicit softmax);
`attend_sequence` the chunked schedule's, all queries of a call at once through torch's
`scaled_dot_product_attention` with the boolean mask of V. Both take heads-first tensors:
q [B, H, T, d_k], keys [B, H, T, n, d_k], values [B, H, T, n, d_v], caches [B, H, L, d].
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from nldsl.lower.program import AttentionSite
from nldsl.runtime.functions import SpecUseError

ROPE_BASE = 10000.0


def rope(a: torch.Tensor, position: torch.Tensor, base: float = ROPE_BASE) -> torch.Tensor:
    """Rotary embedding, rotate-half form (RoFormer eq. 34; as GPT-NeoX and Llama lay it out):
    with n = a's width, theta_i = base^(-2i/n) and p the 0-based position,

        rope(a)_i       = a_i cos(p theta_i) - a_{i+n/2} sin(p theta_i)      i < n/2
        rope(a)_{i+n/2} = a_{i+n/2} cos(p theta_i) + a_i sin(p theta_i)

    so q . k after rope depends on the positions only through their difference.
    a: [..., n], position: broadcastable to a's leading dims (padded with trailing 1s)."""
    half = a.shape[-1] // 2
    exact = torch.promote_types(a.dtype, torch.float32)     # angles of far positions: not in bf16
    inv = base ** (-2.0 * torch.arange(half, dtype=exact, device=a.device) / a.shape[-1])
    position = position.to(exact).reshape(position.shape + (1,) * (a.ndim - 1 - position.ndim))
    angle = position.unsqueeze(-1) * inv                                     # [..., n/2]
    cos, sin = angle.cos().to(a.dtype), angle.sin().to(a.dtype)
    first, second = a[..., :half], a[..., half:]
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


def positions(site: AttentionSite, start: int, steps: int, kept: int, device) -> torch.Tensor:
    """Positions of cache entries then of the call's tokens (one per stream): [(kept + T) n]."""
    tokens = torch.arange(start - kept + 1, start + steps + 1, device=device)
    return tokens.repeat_interleave(site.streams)


def cache_positions(site: AttentionSite, start: int) -> int:
    """How many past positions the cache holds at stream position `start`."""
    return start if site.kept is None else site.kept


def visible(site: AttentionSite, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """The mask of V: query positions [T], key positions [S] -> bool [T, S]."""
    q, k = query[:, None], key[None, :]
    mask = (k >= 1) & (k <= q)
    if site.kind == "window":
        mask &= q - k < site.width
    elif site.kind == "segment":
        mask &= torch.div(k - 1, site.width, rounding_mode="floor") == \
            torch.div(q - 1, site.width, rounding_mode="floor")
    return mask


def extend(cache: torch.Tensor, new: torch.Tensor, site: AttentionSite) -> tuple:
    """(the entries the call's queries see [B, H, L + T n, d], the cache after the call)."""
    bsz, heads, steps, streams, width = new.shape
    entries = torch.cat([cache.expand(bsz, heads, -1, width),
                         new.reshape(bsz, heads, steps * streams, width)], dim=2)
    keep = entries if site.kept is None else entries[:, :, entries.shape[2] - site.kept * streams:]
    return entries, keep


def attend_token(site, q, keys, values, cache_k, cache_v, start, prefix):
    """The reference step: one token at position start + 1. q [B, H, 1, d_k]; keys, values
    [B, H, 1, n, d]; prefix (P_k, P_v) [1|B, H, N_p, d] or None. Returns (o [B, H, 1, d_v],
    the new caches)."""
    k_all, k_keep = extend(cache_k, keys, site)
    v_all, v_keep = extend(cache_v, values, site)
    pos = positions(site, start, 1, cache_positions(site, start), q.device)
    mask = visible(site, torch.tensor([start + 1], device=q.device), pos)[0]      # [S]
    scores = torch.einsum("bhd,bhsd->bhs", q[:, :, 0], k_all) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask, float("-inf"))                           # [B, H, S]
    if prefix is not None:
        p_k, p_v = (p.expand(q.shape[0], q.shape[1], -1, -1) for p in prefix)
        scores = torch.cat([torch.einsum("bhd,bhpd->bhp", q[:, :, 0], p_k)
                            / math.sqrt(q.shape[-1]), scores], dim=-1)
        v_all = torch.cat([p_v, v_all.expand(-1, q.shape[1], -1, -1)], dim=2)
    weights = torch.softmax(scores, dim=-1)                                     # [B, H, S']
    o = torch.einsum("bhs,bhsd->bhd", weights, v_all.expand(-1, q.shape[1], -1, -1))
    return o[:, :, None], k_keep, v_keep


def attend_sequence(site, q, keys, values, cache_k, cache_v, start, prefix):
    """The chunked schedule: every query of the call at once (positions start + 1 ..
    start + T), through scaled_dot_product_attention with V's mask. Shapes as attend_token
    with T tokens."""
    bsz, heads, steps = q.shape[:3]
    k_all, k_keep = extend(cache_k, keys, site)
    v_all, v_keep = extend(cache_v, values, site)
    pos = positions(site, start, steps, cache_positions(site, start), q.device)
    query = torch.arange(start + 1, start + steps + 1, device=q.device)
    mask = visible(site, query, pos)                                            # [T, S]
    k_all = k_all.expand(bsz, heads, -1, -1)
    v_all = v_all.expand(bsz, heads, -1, -1)
    if prefix is not None:
        p_k, p_v = (p.expand(bsz, heads, -1, -1) for p in prefix)
        k_all, v_all = torch.cat([p_k, k_all], dim=2), torch.cat([p_v, v_all], dim=2)
        mask = torch.cat([mask.new_ones(steps, p_k.shape[2]), mask], dim=1)
    if _TWICE.get():
        with sdpa_kernel(SDPBackend.MATH):
            o = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)  # [B, H, T, d_v]
    else:
        o = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)    # [B, H, T, d_v]
    return o, k_keep, v_keep


#: is the graph of this forward differentiated twice? (set by `differentiated_twice`)
_TWICE: ContextVar[bool] = ContextVar("nldsl_attention_twice", default=False)


@contextmanager
def differentiated_twice():
    """Within: attention by the math backend, whose backward is differentiable (CPU's fused
    flash kernel has no derivative of its backward). The task driver's second-order inner
    gradients (`backprop` task levels under outer training) need it when a task level's read
    reaches an attention (the second block of nldsl.lm("hope_attention", depth=2))."""
    token = _TWICE.set(True)
    try:
        yield
    finally:
        _TWICE.reset(token)


def heads_first(frame, value) -> torch.Tensor:
    """A value of a frame ([B, (T,) (H,) d], runtime/frame.py) as [B, H|1, T, d]: a per-token
    frame has T = 1; a frame without heads, or an unsplit value, has one head."""
    value = frame.vector(frame.split(value))
    if frame.heads is None:
        value = value.unsqueeze(frame.prefix)                   # the head axis after the batch
    return value.unsqueeze(2) if frame.prefix == 1 else value.movedim(2, 1)


def in_frame(frame, o: torch.Tensor) -> torch.Tensor:
    """heads_first's inverse: [B, H, T, d] -> the frame's layout."""
    if frame.heads is None:
        o = o.squeeze(1)
        return o.squeeze(1) if frame.prefix == 1 else o
    return o.squeeze(2) if frame.prefix == 1 else o.movedim(1, 2)


def prefix_heads(param: torch.Tensor, heads: int, width: int) -> torch.Tensor | None:
    """Persistent keys or values [N_p, H * d] (or [N_p, d], shared by the heads) as
    [1, H|1, N_p, d], in the `(h d)` order of the head split; None when the width fits neither."""
    n, total = param.shape
    if total == width:
        return param[None, None]
    if heads > 1 and total == heads * width:
        return param.reshape(n, heads, width).permute(1, 0, 2)[None]
    return None


def run_site(site: AttentionSite, call, frame, q, keys: list, values: list, stream: dict,
             params: dict, start: int, compute):
    """One attention call site over the frame's tokens (one in the reference, the whole call in
    the chunked schedule): the queries, keys and values heads first, the caches from the state
    (`stream`, updated in place; created at the module's probe), `compute` attend_token or
    attend_sequence. Returns the output in the frame's layout."""
    q = heads_first(frame, q)                                               # [B, H, T, d_k]
    keys = [heads_first(frame, k) for k in _tensors(keys, call, "key")]
    values = [heads_first(frame, v) for v in _tensors(values, call, "value")]
    heads = max(a.shape[1] for a in [q] + keys + values)
    for what, group in (("key", keys), ("value", values)):
        if len({a.shape[-1] for a in group}) != 1:
            raise SpecUseError(call, f"the {what} streams have different widths "
                               f"{[a.shape[-1] for a in group]}", f"{what}s of one width",
                               "project every stream to the same head_dim")
    if q.shape[-1] != keys[0].shape[-1]:
        raise SpecUseError(call, f"the queries have width {q.shape[-1]} but the keys "
                           f"{keys[0].shape[-1]}", "queries and keys of one width (per head)",
                           "project q and k to the same head_dim")
    q = q.expand(-1, heads, -1, -1)
    stack = lambda group: torch.stack([a.expand(-1, heads, -1, -1) for a in group], dim=3)
    keys, values = stack(keys), stack(values)           # [B, H, T, n, d_k], [B, H, T, n, d_v]
    names = f"{site.name}.keys", f"{site.name}.values"
    if names[0] not in stream:                    # the module's probe: empty caches
        for name, like in zip(names, (keys, values)):
            stream[name] = like.new_zeros(like.shape[0], heads, 0 if site.kept is None
                                          else site.kept * site.streams, like.shape[-1])
    prefix = None
    if site.prefix is not None:
        prefix = tuple(prefix_heads(params[p], heads, like.shape[-1])
                       for p, like in zip(site.prefix, (keys, values)))
        if any(p is None for p in prefix):
            raise SpecUseError(call, f"the prefix {site.prefix} has widths "
                               f"{[params[p].shape[1] for p in site.prefix]}, which fit "
                               f"neither one head nor {heads} heads of the keys' and values' "
                               f"widths ({keys.shape[-1]}, {values.shape[-1]})",
                               "P_k [N_p, heads * d_k] and P_v [N_p, heads * d_v]",
                               "declare the persistent keys and values with the heads' widths")
    o, stream[names[0]], stream[names[1]] = compute(site, q, keys, values, stream[names[0]],
                                                    stream[names[1]], start, prefix)
    return in_frame(frame, o)


def _tensors(streams: list, call, what: str) -> list:
    if not all(isinstance(s, torch.Tensor) for s in streams):
        raise SpecUseError(call, f"a {what} of the attention is a number", f"{what}s that are "
                           "vectors (per head)", "project the input: k = x @ Wk")
    return streams
