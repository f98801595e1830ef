"""The snapshot chunk form (lower/snapshot_forms.py): one Python iteration per chunk.

Inside a chunk of L tokens every context, gate, gradient and read of the level is taken at the
chunk-start states M_g (NL eq. 90), so a chunk is: the contexts as batched forwards at M_g
[B, L, d]; per state one backward of its summed loss to the pre-activations of every
application M(u) the loss makes (a bias-free layer's gradient is delta a^T whatever the loss):

    G_t = sum_apps sum_i delta_{i,t} a_{i-1,t}^T          layer i: z_i = W_i a_{i-1}

and the end state. With a gradient write M_t = d_t M_{t-1} - lr_t G_t each weight's end is a
scalar-gated sum, W_L = P_L0 W_0 - sum_s lr_s P_Ls G_s (P_ts = prod_{s<j<=t} d_j, products of
the gates, never ratios). With `dgd(precondition = true)` the first layer (the one that takes
the key) follows eq. 88 on the previous token's weight,

    W_t = W_{t-1} (d_t I - lr_t k_t k_t^T) - lr_t sum_apps delta_{1,t} a_{0,t}^T,

transposed S = W^T: S_t = d_t S_{t-1} - lr_t k_t (k_t^T S_{t-1}) + sum_apps a_0 (-lr_t delta_1)^T,
the gated delta rule with extra rank-one writes. Each token becomes 1 + A steps of
delta_chunk.linear_delta_blocks: (k_t, decay d_t, erase lr_t, write 0), then per application
(a_0, decay 1, erase 0, write -lr_t delta_1): the same S_t, in the WY/UT form. The first
layers of all states of one shape and step count are one call, one state per head, and stay
stacked from chunk to chunk (no copy of the weights per chunk). The other layers' ends are one
matmul over all applications' factors, accumulated in place into the gated start. A `conv` in a
context or read (Hope's k = l2norm(conv(M_k(x), 4))) runs once per chunk over its tokens from
the call site's cache; the inner gradients take its output as data (`_Chunk.conv`). Memory for
the backward pass: the chunk's activations and factors, the chunk-start weights once per chunk.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from nldsl.lower.program import TokenLevel
from nldsl.lower.snapshot_forms import SnapshotForm
from nldsl.module.deep_chunk import batched_forward, chunk_segments
from nldsl.module.delta_chunk import decay_products, unit_lower_solve
from nldsl.module.snapshot_chain import chain_end
from nldsl.module.unit import STREAM
from nldsl.runtime import mlp
from nldsl.runtime.evaluate import FrameEvaluator
from nldsl.runtime.functions import causal_conv


def run_snapshot_level(values, level: TokenLevel, form: SnapshotForm) -> None:
    """Write the level's states and bind its contexts and reads over the whole call."""
    own = values.new_state[level.name]
    steps = values.x.shape[1]
    keep = level.backprop and torch.is_grad_enabled()
    by_layer = lambda name, flat: tuple(w.contiguous() for w in      # [B, d_out, d_in] each
                                        mlp.layers(level.states[name].mlp, flat))
    states = {name: by_layer(name, own[name]) for name in level.states}
    snapshot = {name: by_layer(name, own.get(f"{name}.chunk_start", own[name]))
                for name in level.states}
    buffers = {name: by_layer(level.buffer_state(name), own[name]) for name in level.hidden}
    start, stacks = values.new_state["_stream"]["t"], {}
    contexts, reads = {n: [] for n in form.contexts}, {n: [] for n in level.reads}
    done = (lambda v: v) if torch.is_grad_enabled() else \
        (lambda v: v.detach() if isinstance(v, torch.Tensor) else v)
    for t0, t1 in chunk_segments(start, steps, level.chunk):
        if (start + t0) % level.chunk == 0:
            snapshot = states
        chunk = _Chunk(values, level, form, snapshot, t0, t1)
        with torch.enable_grad():      # the gradients' backward; the outer graph only if keep
            for name in form.contexts:
                contexts[name].append(done(chunk.fit(chunk.context(name))))
            for name, (expr, _) in level.reads.items():
                reads[name].append(done(chunk.fit(chunk.evaluate(expr))))
            gates, factors, transforms = _gradients(form, chunk, keep)
        states, buffers = _end_states(level, form, gates, factors, transforms, states, buffers,
                                      stacks)
        if not keep:        # (tensors without a graph stay themselves: `stacks` knows them)
            states, buffers = _detached(states), _detached(buffers)
    frame = values.frames[level.name]
    flat = lambda name, ws: mlp.flatten(level.states[name].mlp, ws)
    for name, parts in contexts.items():
        values.memo[name] = (_cat(parts), frame)
    for name, parts in reads.items():
        values.bound[name] = _cat(parts)
    own.update({name: flat(name, ws) for name, ws in states.items()})
    own.update({name: flat(level.buffer_state(name), ws) for name, ws in buffers.items()})
    own.update({f"{name}.chunk_start": flat(name, ws) for name, ws in snapshot.items()})


class _Chunk:
    """The level's names over tokens [t0, t1) at the chunk-start states: contexts computed once
    per chunk, every memory application M(u) recorded (its layer inputs and pre-activations),
    the same input object applied once."""

    def __init__(self, values, level: TokenLevel, form: SnapshotForm, snapshot: dict, t0: int,
                 t1: int):
        self.values, self.level, self.t0, self.t1 = values, level, t0, t1
        self.per_chunk = set(form.contexts)
        self.frame = values.frames[level.name]
        self.weights = snapshot
        self.names: dict[str, object] = {}
        self.calls: dict[str, object] = {}
        self.records: dict[str, list[tuple[list, list]]] = {name: [] for name in snapshot}
        self.recording, self.outer_grad = True, torch.is_grad_enabled()
        self.convs: dict[str, torch.Tensor] = {}

    def evaluate(self, expr, calls: dict | None = None):
        calls = self.calls if calls is None else calls
        return _Memoised(self.frame, self.lookup, self.apply, self.conv, calls)(expr)

    def conv(self, call):
        """The call site's causal conv over the chunk [B, L, C], once per chunk, from the site's
        cache (the inputs of the tokens before t0, as they were computed then). Its input is
        evaluated with its own memo and no application recorded: a conv's output is its
        token's value, which the inner gradients take as data (the reference computes it once
        per token, at its context, before any gradient)."""
        site = self.values.program.convs[(call.span.line, call.span.col)]
        if site.param not in self.convs:
            self.recording = False
            try:
                with torch.enable_grad():       # its graph is the outer one, even under stopgrad
                    a = self.evaluate(call.args[0], {})                   # [B, L, C]
            finally:
                self.recording = True
            stream = self.values.new_state[STREAM]
            y, cache = causal_conv(a, self.values.params[site.param], stream[site.param])
            stream[site.param] = cache if self.outer_grad else cache.detach()
            self.convs[site.param] = y
        return self.convs[site.param]

    def context(self, name: str):
        if name not in self.names:
            self.names[name] = self.evaluate(self.level.contexts[name])
        return self.names[name]

    def lookup(self, name: str):
        if name in self.per_chunk:
            return self.context(name)
        if name not in self.names:
            value = self.values._lookup(name, self.frame)
            steps = self.values.x.shape[1]
            self.names[name] = value[:, self.t0:self.t1] if isinstance(value, torch.Tensor) and \
                value.ndim >= 2 and value.shape[1] == steps else value
        return self.names[name]

    def apply(self, name: str, u):
        """M(u) at the chunk start, its factors recorded where a gradient may flow (not under
        a stop-gradient: _Memoised evaluates those without autograd)."""
        layout = self.level.states[name].mlp
        if not (torch.is_grad_enabled() and self.recording):
            return batched_forward(layout, self.weights[name], u)
        inputs, pre = [], []
        y = batched_forward(layout, self.weights[name], u, inputs, pre)
        self.records[name].append((inputs, pre))
        return y

    def fit(self, value):
        """A chunk's value with its token axis [B, L, ..] (a value constant over the tokens is
        expanded), so that the chunks concatenate."""
        if isinstance(value, torch.Tensor) and value.ndim >= 2 and value.shape[1] == 1:
            return value.expand(value.shape[:1] + (self.t1 - self.t0,) + value.shape[2:])
        return value

    def factors(self, name: str, loss, keep: bool):
        """[(a_{i-1} [B, L, d_{i-1}], delta_i [B, L, d_i]) per layer] per application of `name`
        that the loss depends on."""
        records = [r for r in self.records[name] if r[1]]
        pre = [z for _, zs in records for z in zs]
        grads = torch.autograd.grad(loss.sum(), pre, retain_graph=True, create_graph=keep,
                                    allow_unused=True)
        found, i = [], 0
        for inputs, zs in records:
            deltas = grads[i:i + len(zs)]
            i += len(zs)
            if all(d is not None for d in deltas):
                pairs = list(zip(inputs, deltas))
                found.append(pairs)
        return found


def _gradients(form: SnapshotForm, chunk: "_Chunk", keep: bool):
    """Per write: (lr [B, L], decay [B, L], key [B, L, d_0] or None), the loss's factors,
    each application's as (pairs, whether its input is the key itself), and its chain's
    transforms as (step, c [B, L], beta [B, L]) (module/snapshot_chain.py)."""
    gates, factors, transforms = {}, {}, {}
    detach = (lambda v: v) if keep else (lambda v: v.detach() if v is not None else None)
    for write in form.writes:
        lr = detach(chunk.fit(_per_token(chunk, chunk.evaluate(write.lr))))       # [B, L]
        decay = detach(chunk.fit(_per_token(chunk, chunk.evaluate(write.decay))))
        key = chunk.evaluate(write.precondition) if write.precondition is not None else None
        apps = chunk.factors(write.target, chunk.evaluate(write.loss), keep)
        factors[write.target] = [([(detach(a), detach(d)) for a, d in pairs],
                                  key is not None and pairs[0][0] is key) for pairs in apps]
        gates[write.target] = (lr, decay, detach(key))
        transforms[write.target] = [_transform_gates(chunk, step, detach) for step in write.chain]
    return gates, factors, transforms


def _transform_gates(chunk: "_Chunk", step, detach):
    """A transform m <- beta m + c u as (step, c [B, L], beta [B, L])."""
    gate = lambda expr: detach(chunk.fit(_per_token(chunk, chunk.evaluate(expr))))
    beta = gate(step.args["beta"])
    return step, (1 - beta if step.rule == "ema" else gate(step.args["lr"])), beta


class _Memoised(FrameEvaluator):
    """Evaluates a call once per chunk for the same function of the same argument values,
    however often the expressions repeat it: an inlined context (a loss names k = l2norm(M_k(x))
    and v_hat_k = stopgrad(M_k(M_v(x))) again, `precondition` its key) is then the context's own
    value, and a memory application of it is made and recorded once. Keys hold the arguments,
    so that their ids stay theirs."""

    def __init__(self, frame, lookup, apply, conv, calls: dict):
        super().__init__(frame, lookup, apply, conv)
        self.calls = calls

    def _call(self, e):
        if e.func == "conv":
            return self.conv(e)
        args = [self(a) for a in e.args] + [self(k.value) for k in e.kwargs]
        key = (e.func, tuple(k.name for k in e.kwargs)) + tuple(map(_identity, args))
        if key in self.calls:
            return self.calls[key][1]
        if not torch.is_grad_enabled():         # inside a stop-gradient: kept apart, no graph
            inner = self.calls.setdefault(_DETACHED, {})
            if key not in inner:
                inner[key] = (args, super()._call(e))
            return inner[key][1]
        if e.func == "stopgrad":                # its value has no graph: compute it without one
            with torch.no_grad():
                self.calls[key] = (args, super()._call(e))
        else:
            self.calls[key] = (args, super()._call(e))
        return self.calls[key][1]


_DETACHED = ("stopgrad: values computed without a graph",)


def _identity(value):
    return ("tensor", id(value)) if isinstance(value, torch.Tensor) else ("value", repr(value))


def _end_states(level: TokenLevel, form: SnapshotForm, gates: dict, factors: dict,
                transforms: dict, states: dict, buffers: dict, stacks: dict):
    """Every state and chain buffer after the chunk's last token (module docstring); `stacks`
    holds the delta-rule groups' stacked first layers between chunks (_first_layers)."""
    new, new_buffers = {}, {}
    for write in form.writes:
        if write.chain:
            new[write.target], ends = chain_end(
                gates[write.target], transforms[write.target],
                [pairs for pairs, _ in factors[write.target]], states[write.target], buffers)
            new_buffers.update(ends)
            continue
        lr, decay, key = gates[write.target]
        weights = states[write.target]
        suffix = _suffix_products(decay)                                      # [B, L]
        coefficient = lr * suffix                                             # lr_s P_Ls
        total = suffix[:, 0] * decay[:, 0]                                    # P_L0 [B]
        ends = []
        for i, w in enumerate(weights):
            if i == 0 and key is not None:
                ends.append(None)                                             # the delta rule
                continue
            apps = [pairs[i] for pairs, _ in factors[write.target]]          # one matmul for all
            a = torch.cat([a for a, _ in apps], dim=1)                        # [B, A L, d_in]
            scaled = torch.cat([d * -coefficient.unsqueeze(-1) for _, d in apps], dim=1)
            ends.append(_accumulate(w * total[:, None, None], scaled.mT, a))  # [B, o, i]
        new[write.target] = ends
    preconditioned = [w for w in form.writes if w.precondition is not None and not w.chain]
    for group in _groups(level, preconditioned, factors):
        for write, end in zip(group, _first_layers(group, gates, factors, states, stacks)):
            new[write.target][0] = end
    return {name: tuple(ws) for name, ws in new.items()}, new_buffers


def _groups(level: TokenLevel, writes, factors) -> list[list]:
    """The preconditioned writes by their first layer's shape and steps per token (1 + the
    applications whose input is not the key): one delta-rule call each, none padded."""
    groups: dict[tuple, list] = {}
    for write in writes:
        steps = 1 + sum(not on_key for _, on_key in factors[write.target])
        groups.setdefault((level.states[write.target].mlp.layers[0], steps), []).append(write)
    return list(groups.values())


def _first_layers(group, gates, factors, states, stacks: dict) -> list[torch.Tensor]:
    """eq. 88 on the first layers of a group of states (one head each): W_L [B, d_1, d_0].
    An application whose input is the key writes in the key's own step (k_t w_t^T, DeltaNet's
    single step); every other one takes a step of its own. The group's end weights are views
    of one [B G, d_1, d_0] tensor, kept in `stacks` so that the next chunk starts from it
    without copying the weights again."""
    others = {w.target: [pairs[0] for pairs, on_key in factors[w.target] if not on_key]
              for w in group}
    count = 1 + len(others[group[0].target])                                 # steps per token
    keys, decays, erases, writes, starts = [], [], [], [], []
    for write in group:
        lr, decay, key = gates[write.target]
        one, zero = torch.ones_like(lr), torch.zeros_like(lr)
        first = states[write.target][0]
        on_key = [pairs[0][1] for pairs, is_key in factors[write.target] if is_key]
        own = -lr.unsqueeze(-1) * sum(on_key) if on_key else \
            key.new_zeros(key.shape[:-1] + first.shape[-2:-1])                # [B, L, d_1]
        steps_k = [key] + [a for a, _ in others[write.target]]                # [B, L, d_0]
        steps_w = [own] + [-lr.unsqueeze(-1) * d for _, d in others[write.target]]
        keys.append(_interleave(steps_k))
        writes.append(_interleave(steps_w))
        decays.append(_interleave([decay] + [one] * (count - 1)))
        erases.append(_interleave([lr] + [zero] * (count - 1)))
        starts.append(first)                                                  # [B, d_1, d_0]
    stack = lambda parts: torch.stack(parts, dim=1).flatten(0, 1)            # [B G, ..]
    bsz, names = starts[0].shape[0], tuple(w.target for w in group)
    views, stacked = stacks.get(names, ((), None))
    w0 = stacked if len(views) == len(starts) and all(a is b for a, b in zip(views, starts)) \
        else stack(starts)
    end = delta_end(w0, stack(decays), stack(erases), stack(keys), stack(writes))
    ends = end.view(bsz, len(group), *end.shape[1:]).unbind(1)               # [B, d_1, d_0] each
    stacks[names] = (ends, end)
    return list(ends)


def delta_end(w0, a, c, k, w):
    """W_L of W_t = W_{t-1} (a_t I - c_t k_t k_t^T) + w_t k_t^T over one block, in the WY/UT
    form of delta_chunk.py transposed (S = W^T there): w0 [G, d_1, d_0], a, c [G, L],
    k [G, L, d_0], w [G, L, d_1]. With U, V = (I + N)^{-1} [W, c gamma' K],
    W_L = gamma_L W_0 + (U - V W_0^T)^T E, E = D[L-1, :] o K: products of L d^2 multiply-adds,
    the weights never transposed or copied."""
    d, gamma = decay_products(a)                                              # [G, L, L], [G, L]
    gamma_prev = F.pad(gamma[:, :-1], (1, 0), value=1.0)
    d_prev = F.pad(d[:, :-1], (0, 0, 1, 0))                                   # D[t-1, i]
    n = torch.bmm(k, k.mT) * (c.unsqueeze(-1) * d_prev)                      # [G, L, L]
    rhs = torch.cat((w, (c * gamma_prev).unsqueeze(-1) * k), dim=-1)         # [G, L, d_1 + d_0]
    u, v = _unit_lower_solve(n, rhs).split((w.shape[-1], k.shape[-1]), dim=-1)
    delta = u.mT - torch.bmm(w0, v.mT)                                        # [G, d_1, L]
    edge = d[:, -1, :].unsqueeze(-1) * k                                      # E [G, L, d_0]
    return _accumulate(w0 * gamma[:, -1, None, None], delta, edge)           # [G, d_1, d_0]


def _detached(states: dict) -> dict:
    return {name: tuple(w.detach() if w.requires_grad else w for w in ws)
            for name, ws in states.items()}


def _accumulate(start: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """start + a @ b, in place into `start` (a fresh tensor: one pass over the weights fewer);
    under autocast (a, b in a lower precision) out of place, in start's dtype."""
    if start.dtype == a.dtype == b.dtype:
        return start.baddbmm_(a, b)
    return start + torch.bmm(a, b)


def _unit_lower_solve(n: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """(I + N)^{-1} R for strictly lower N [G, L, L]: one triangular solve (LAPACK's trsm,
    half the time of delta_chunk's inversion at these sizes) where torch has it, float32 and
    float64; delta_chunk.unit_lower_solve otherwise (bfloat16 under autocast)."""
    if n.dtype in (torch.float32, torch.float64):
        return torch.linalg.solve_triangular(n, rhs, upper=False, unitriangular=True)
    return unit_lower_solve(n, rhs)


def _interleave(parts: list[torch.Tensor]) -> torch.Tensor:
    """Per-token steps [B, L, ..] each -> [B, L * len(parts), ..], token-major."""
    return parts[0] if len(parts) == 1 else torch.stack(parts, dim=2).flatten(1, 2)


def _suffix_products(decay: torch.Tensor) -> torch.Tensor:
    """decay [B, L] -> P [B, L], P[s] = prod_{s<j<L} decay_j (1 at the last token): a reversed
    cumulative product, exact for gates that are 0."""
    shifted = torch.cat([decay[:, 1:], torch.ones_like(decay[:, :1])], dim=1)
    return shifted.flip(1).cumprod(1).flip(1)


def _per_token(chunk: _Chunk, gate):
    """A gate as [B, L] (a number or a per-sequence value broadcast over the chunk)."""
    x = chunk.values.x
    shape = (x.shape[0], chunk.t1 - chunk.t0)
    if not isinstance(gate, torch.Tensor):
        return x.new_full(shape, float(gate))
    gate = gate.squeeze(-1) if gate.ndim == 3 and gate.shape[-1] == 1 else gate
    if gate.ndim != 2:
        raise NotPerToken(gate.shape)
    return gate.expand(shape)


class NotPerToken(Exception):
    """A gate turned out not to be one number per token (a channel-wise gate): not the form."""


def _cat(parts: list):
    return torch.cat(parts, dim=1) if isinstance(parts[0], torch.Tensor) else parts[0]
