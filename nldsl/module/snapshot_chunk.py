"""The snapshot chunk form (lower/snapshot_forms.py): one Python iteration per chunk.

Inside a chunk of L tokens every context, gate, gradient and read of the level is taken at the
chunk-start states M_g (NL eq. 90), so a chunk is: the contexts as batched forwards at M_g
[B, L, d]; per state a backward of its summed loss to the pre-activations of every
application M(u) the loss makes, one for the states of a pass (SnapshotForm.passes: no loss of
it reaches another's applications), only the applications a gradient can reach recorded (none
under a stopgrad; without an outer gradient, none in a context no loss reaches); a bias-free
layer's gradient is delta a^T whatever the loss:

    G_t = sum_apps sum_i delta_{i,t} a_{i-1,t}^T          layer i: z_i = W_i a_{i-1}

and the end state. With a gradient write M_t = d_t M_{t-1} - lr_t G_t each weight's end is a
scalar-gated sum, W_L = P_L0 W_0 - sum_s lr_s P_Ls G_s (P_ts = prod_{s<j<=t} d_j, products of
the gates, never ratios). With `dgd(precondition = true)` the first layer (the one that takes
the key) follows eq. 88 on the previous token's weight,

    W_t = W_{t-1} (d_t I - lr_t k_t k_t^T) - lr_t sum_apps delta_{1,t} a_{0,t}^T,

transposed S = W^T: S_t = d_t S_{t-1} - lr_t k_t (k_t^T S_{t-1}) + sum_apps a_0 (-lr_t delta_1)^T,
the gated delta rule with extra rank-one writes, in the WY/UT form: module/snapshot_end.py
computes every end state. A `conv` in a context or read (Hope's k = l2norm(conv(M_k(x), 4)))
runs once per chunk over its tokens from the call site's cache; the inner gradients take its
output as data (`_Chunk.conv`). Memory for
the backward pass: the chunk's activations and factors, the chunk-start weights once per chunk.
"""
from __future__ import annotations

import torch

from nldsl.lower.program import TokenLevel
from nldsl.lower.snapshot_forms import SnapshotForm
from nldsl.module.deep_chunk import chunk_segments
from nldsl.module.deep_sums import batched_forward
from nldsl.module.guard import clip_applications
from nldsl.module.snapshot_end import Application, end_states
from nldsl.module.unit import STREAM
from nldsl.runtime import mlp
from nldsl.runtime.evaluate import FrameEvaluator
from nldsl.runtime.functions import causal_conv


@torch.compiler.disable       # its inner gradients run eagerly (deep_chunk.loss_factors)
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
    done = (lambda v: v) if torch.is_grad_enabled() else _without_graph
    for t0, t1 in chunk_segments(start, steps, level.chunk):
        if (start + t0) % level.chunk == 0:
            snapshot = states
        chunk = _Chunk(values, level, form, snapshot, t0, t1)
        with torch.enable_grad():      # the gradients' backward; the outer graph only if keep
            for name in sorted(form.contexts, key=lambda n: n not in form.reached):
                contexts[name].append(done(chunk.fit(chunk.context(name))))
            for name, (expr, _) in level.reads.items():
                reads[name].append(done(chunk.fit(chunk.evaluate(expr))))
            gates, factors, transforms = _gradients(form, chunk, keep)
        states, buffers = end_states(level, form, gates, factors, transforms, states, buffers,
                                     stacks, snapshot is states)
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
        self.per_chunk, self.reached = set(form.contexts), form.reached
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
                # only the outer gradient passes a conv (even a call under stopgrad: the site
                # is memoised for every use), the inner ones take its output as data
                with torch.set_grad_enabled(self.outer_grad):
                    a = self.evaluate(call.args[0], {})                   # [B, L, C]
            finally:
                self.recording = True
            stream = self.values.new_state[STREAM]
            y, cache = causal_conv(a, self.values.params[site.param], stream[site.param])
            stream[site.param] = cache if self.outer_grad else cache.detach()
            self.convs[site.param] = y
        return self.convs[site.param]

    def context(self, name: str):
        """A context's value. Without an outer gradient one that no inner gradient reaches
        (SnapshotForm.reached) is computed without autograd, its applications unrecorded (the
        chunk computes the reached ones first, so that none is computed in this mode)."""
        if name not in self.names:
            with torch.set_grad_enabled(self.outer_grad or name in self.reached):
                self.names[name] = self.evaluate(self.level.contexts[name])
        return self.names[name]

    def lookup(self, name: str):
        if name in self.per_chunk:
            return self.context(name)
        if name not in self.names:
            # memoised (for the call, and its chunk's slice for the chunk) by whichever use
            # asks first: with the outer graph when there is one, also when a stopgrad asks
            # (its no_grad would leave the value without a graph for every later use, as for
            # a conv site)
            with torch.set_grad_enabled(self.outer_grad):
                value = self.values._lookup(name, self.frame)
                steps = self.values.x.shape[1]
                self.names[name] = value[:, self.t0:self.t1] if isinstance(value, torch.Tensor) \
                    and value.ndim >= 2 and value.shape[1] == steps else value
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

    def factors(self, losses: dict, keep: bool) -> dict:
        """Per state of `losses` (name -> its loss [B, L]), ([(a_{i-1} [B, L, d_{i-1}],
        delta_i [B, L, d_i]) per layer], the first layer's pre-activation [B, L, d_1]) per
        application of it that its loss depends on: one backward of the losses' sum, which
        at a state's applications is its own loss's gradient (no loss of a pass reaches
        another state of it: SnapshotForm.passes)."""
        records = {name: [r for r in self.records[name] if r[1]] for name in losses}
        pre = [z for rs in records.values() for _, zs in rs for z in zs]
        total = sum(loss.sum() for loss in losses.values())
        grads = torch.autograd.grad(total, pre, retain_graph=True, create_graph=keep,
                                    allow_unused=True)
        found, i = {}, 0
        for name, rs in records.items():
            found[name] = []
            for inputs, zs in rs:
                deltas = grads[i:i + len(zs)]
                i += len(zs)
                if all(d is not None for d in deltas):
                    found[name].append((list(zip(inputs, deltas)), zs[0]))
        return found


def _gradients(form: SnapshotForm, chunk: "_Chunk", keep: bool):
    """Per write: (lr [B, L], decay [B, L], key [B, L, d_0] or None), the loss's
    applications (snapshot_end.Application), and its chain's transforms as
    (step, c [B, L], beta [B, L]) (module/snapshot_chain.py)."""
    gates, factors, transforms, losses, seen = {}, {}, {}, {}, {}
    detach = (lambda v: v) if keep else _without_graph

    def gate(expr):                    # [B, L]; one tensor for the writes that share a gate
        raw = chunk.evaluate(expr)
        if _identity(raw) not in seen:
            seen[_identity(raw)] = (raw, detach(chunk.fit(_per_token(chunk, raw))))
        return seen[_identity(raw)][1]

    for write in form.writes:
        key = chunk.evaluate(write.precondition) if write.precondition is not None else None
        losses[write.target] = chunk.evaluate(write.loss)                         # [B, L]
        gates[write.target] = (gate(write.lr), gate(write.decay), key)
        transforms[write.target] = [_transform_gates(gate, step) for step in write.chain]
    clips = {w.target: gate(w.clip) for w in form.writes if w.clip is not None}    # [B, L]
    for names in form.passes:
        for name, apps in chunk.factors({n: losses[n] for n in names}, keep).items():
            if name in clips:                          # the guard, before any transform
                clipped = clip_applications([pairs for pairs, _ in apps], clips[name],
                                            len(chunk.level.states[name].mlp.layers))
                apps = [(pairs, pre) for pairs, (_, pre) in zip(clipped, apps)]
            key = gates[name][2]
            factors[name] = [Application([(detach(a), detach(d)) for a, d in pairs],
                                         key is not None and pairs[0][0] is key, detach(pre))
                             for pairs, pre in apps]
            gates[name] = gates[name][:2] + (detach(key),)
    return gates, factors, transforms


def _without_graph(value):
    """value cut from the autograd graph (the inner gradients' factors when no outer gradient
    flows through the writes); a tensor without one stays itself."""
    return value.detach() if isinstance(value, torch.Tensor) and value.requires_grad else value


def _transform_gates(gate, step):
    """A transform m <- beta m + c u as (step, c [B, L], beta [B, L])."""
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
        if e.func == "stopgrad" and torch.is_grad_enabled():
            with torch.no_grad():               # its value has no graph: compute it without one
                return self._call(e)
        args = [self(a) for a in e.args] + [self(k.value) for k in e.kwargs]
        key = (e.func, tuple(k.name for k in e.kwargs)) + tuple(map(_identity, args))
        if key in self.calls:
            return self.calls[key][1]
        if not torch.is_grad_enabled():         # under a stop-gradient: kept apart, unrecorded
            inner = self.calls.setdefault(_DETACHED, {})
            if key not in inner:
                inner[key] = (args, super()._call(e))
            return inner[key][1]
        self.calls[key] = (args, super()._call(e))
        return self.calls[key][1]


_DETACHED = ("stopgrad: values computed without a graph",)


def _identity(value):
    return ("tensor", id(value)) if isinstance(value, torch.Tensor) else ("value", repr(value))


def _detached(states: dict) -> dict:
    return {name: tuple(w.detach() if w.requires_grad else w for w in ws)
            for name, ws in states.items()}


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
