"""The values of one token in the reference schedule: what each name means, and when.

A name is looked up from a *view* of a level:

    view        a state of that level is          used for
    snapshot    its chunk-start value             contexts, gradients (docs/language.md, Chunks)
    current     its value now                     explicit updates, gates, plain reads, `out`
    before      the value this token's write      `read ... before write`
                started from (chunk-start under chunk C)

Contexts and reads are computed once per token (memoised) in their own level's frame, at the
stage the program places them (`TokenLevel.placements`: a context's own states at the snapshot,
a read after or before the write). The head steps are the program's too: a context its level
lists in `splits` is split into heads when computed, a read in `merges` is merged when another
frame sees it, and both are checked against the widths the lowering computed (a mismatch is a
bug of the lowering or the runtime, never of the spec). A conv or attention call site runs once
per token, whoever asks, and advances its cache in the state.
"""
from __future__ import annotations

import torch

from nldsl.language import ast
from nldsl.lower.program import BEFORE_WRITE, SNAPSHOT, HeadMerge, HeadSplit, ModuleWrite, \
    Program, TokenLevel
from nldsl.runtime import layerwise, mlp
from nldsl.runtime.attention import attend_token, run_site
from nldsl.runtime.evaluate import FrameEvaluator
from nldsl.runtime.frame import Frame
from nldsl.runtime.functions import causal_conv, matmul, value_sum

STREAM = "_stream"
BASE = Frame(1)


class UnitValues:
    def __init__(self, program: Program, params: dict, state: dict, x_t: torch.Tensor, t: int):
        self.program, self.params, self.state, self.x, self.t = program, params, state, x_t, t
        self.frames = {level.name: Frame(1, level.heads) for level in program.levels}
        self.splits = {level.name: {s.name: s for s in level.splits} for level in program.levels}
        self.merges = {m.read: m for level in program.levels for m in level.merges}
        self.memo: dict[str, tuple[object, Frame]] = {}
        self.convs: dict[tuple[int, int], torch.Tensor] = {}
        self.attended: dict[str, torch.Tensor] = {}
        self.means: dict[tuple[int, int], object] = {}
        self.before: dict[str, dict] = {}

    # -- what the schedule asks for ------------------------------------------------------
    def context(self, level: TokenLevel, name: str):
        if name in level.memories:                      # a derived memory: at the snapshot
            return self._memory(level, name, "snapshot", {})
        if name not in self.memo:
            view = "snapshot" if level.placements[name].stage == SNAPSHOT else "current"
            value = self.evaluate(level, view, level.contexts[name])
            frame = self.frames[level.name]
            step = self.splits[level.name].get(name)
            self.memo[name] = (value if step is None else _split(frame, value, step), frame)
        return self.memo[name][0]

    def windowed(self, level: TokenLevel, name: str) -> torch.Tensor:
        """A context's values at the last min(t, c) tokens, oldest first: [B, n, (H,) ...]
        (the level's ring buffer `name.window`, then this token's value)."""
        key = f"{name}.window"
        if key not in self.memo:
            now = self.context(level, name)
            if not isinstance(now, torch.Tensor):                  # a number: one per sequence
                now = self.x.new_full((self.x.shape[0],) + (1,) * (level.heads is not None), now)
            past = self.state[level.name].get(key)
            now = now.unsqueeze(1)                                 # [B, 1, (H,) ...]
            self.memo[key] = (now if past is None else torch.cat([past, now], 1), None)
        return self.memo[key][0]

    def outer_context(self, name: str):
        if name not in self.memo:
            self.memo[name] = (self._evaluator(None, "current")(self.program.outer_contexts[name]), BASE)
        return self.memo[name][0]

    def read(self, level: TokenLevel, name: str):
        if name not in self.memo:
            view = "before" if level.placements[name].stage == BEFORE_WRITE else "current"
            self.memo[name] = (self.evaluate(level, view, level.reads[name][0]),
                               self.frames[level.name])
        return self.memo[name][0]

    def output(self) -> torch.Tensor:
        return self._evaluator(None, "current")(self.program.output)     # [B, dim]

    def evaluate(self, level: TokenLevel, view: str, expr: ast.Expr, overrides=None):
        return self._evaluator(level, view, overrides)(expr)

    def evaluate_memory(self, level: TokenLevel, view: str, expr: ast.Expr, layout,
                        overrides=None):
        """A per-weight expression of the level's MLP memories of `layout`, layer by layer
        (runtime/layerwise.py) -> flat weights [B, (H,) P]."""
        frame = self.frames[level.name]
        lookup = lambda name: self._lookup(name, level, view, frame, overrides or {})
        apply = lambda name, u: self._apply(name, lookup(name), u)
        conv = lambda call, a, width: self._conv(call, a, frame)
        names = {n for n, s in level.states.items() if s.mlp == layout} | \
            {n for n, other in level.memories.items() if other == layout}
        return layerwise.evaluate(layout, expr, frame, lookup, apply, conv, names)

    def _memory(self, level: TokenLevel, name: str, view: str, overrides: dict):
        """A derived memory (a let holding an MLP) at `view`: seen at the time of whoever uses
        it, the gradient's snapshot or a read's state (docs/language.md, MLP memories)."""
        key = f"{name}@{view}"
        if overrides or key not in self.memo:
            value = self.evaluate_memory(level, view, level.contexts[name],
                                         level.memories[name], overrides)
            if overrides:
                return value
            self.memo[key] = (value, self.frames[level.name])
        return self.memo[key][0]

    @torch.compiler.disable              # eager under torch.compile (deep_chunk.loss_factors)
    def gradient(self, level: TokenLevel, write: ModuleWrite):
        """G = grad_S L at the chunk-start state: the closed form, or autograd on the loss
        (per sequence and head: the states are separate tensors, so the gradient of the summed
        loss is each unit's own gradient)."""
        if write.grad is not None:
            return self.evaluate(level, "snapshot", write.grad)
        start = self._states(level, "snapshot")[write.target]
        keep = level.backprop and torch.is_grad_enabled()
        with torch.enable_grad():
            # a fresh node of the graph: the outer gradient still reaches `start` through it
            leaf = start.clone() if keep and start.requires_grad else \
                start.detach().requires_grad_(True)
            loss = self.evaluate(level, "snapshot", write.loss, {write.target: leaf})
            (grad,) = torch.autograd.grad(loss.sum(), leaf, create_graph=keep)
        return grad

    # -- names -----------------------------------------------------------------------------
    def _evaluator(self, level: TokenLevel | None, view: str, overrides=None) -> FrameEvaluator:
        frame = self.frames[level.name] if level is not None else BASE
        lookup = lambda name: self._lookup(name, level, view, frame, overrides or {})
        apply = lambda name, u: self._apply(name, lookup(name), u)
        conv = lambda call, a, width: self._conv(call, a, frame)
        window = lambda call, width: self._window(call, width, level, view, overrides or {})
        attend = lambda call, q, keys, values: self._attend(call, q, keys, values, frame)
        period_mean = lambda call, a: self._period_mean(call, a, level)
        return FrameEvaluator(frame, lookup, apply, conv, window=window, attend=attend,
                              period_mean=period_mean)

    def _window(self, call: ast.Call, width: int, level: TokenLevel, view: str, overrides: dict):
        """window(c, loss, gamma) = sum over the last min(t, c) tokens i of gamma_i loss_i
        (lower/windows.py): one evaluation in a frame whose second batch dim is the window,
        the level's contexts from its ring buffer, its states (as `view` and `overrides` give
        them) the same for every i."""
        frame = Frame(2, level.heads)
        past = {name: self.windowed(level, name)[:, -width:] for name in level.windowed}
        states = {**self._states(level, view), **overrides}

        def lookup(name: str):
            if name in past:
                return past[name]
            if name in states:
                return states[name].unsqueeze(1)
            if name in level.memories:                # a derived memory, as the states are seen
                return self._memory(level, name, view, overrides).unsqueeze(1)
            if name in self.program.hparams:
                return self.program.hparams[name]
            if name in self.params:
                return frame.lift(self.params[name])
            raise RuntimeError(f"window(...) names {name!r}, which the lowering should have "
                               "refused (lower/windows.py)")

        evaluator = FrameEvaluator(frame, lookup, lambda name, u: self._apply(name, lookup(name), u),
                                   None, None)
        parts = dict(zip(("width", "loss", "gamma"), call.args)) | {k.name: k.value
                                                                    for k in call.kwargs}
        loss = evaluator(parts["loss"])                            # [B, n, (H)]
        gamma = evaluator(parts["gamma"]) if "gamma" in parts else 1
        return value_sum(_times(frame, gamma, loss).movedim(1, -1), frame.nb - 1)

    def _lookup(self, name: str, level, view: str, frame: Frame, overrides: dict):
        if name in overrides:
            return overrides[name]
        program = self.program
        if name == "x":
            return BASE.merge(self.x, frame)
        if name == "t":
            return self.t
        if name in program.hparams:
            return program.hparams[name]
        if name in self.params:
            return frame.lift(self.params[name])
        if name in program.outer_contexts:
            return BASE.merge(self.outer_context(name), frame)
        owner = program.owner(name)
        if owner is None:
            raise KeyError(name)
        if name in owner.memories:                       # weights, as a state is seen
            memory = self._memory(owner, name, view if owner is level else "current", overrides)
            return self._seen(memory, owner, frame, state=True)
        if name in owner.contexts:
            return self._seen(self.context(owner, name), owner, frame)
        if name in owner.reads:
            seen = self._seen(self.read(owner, name), owner, frame)
            if name in self.merges and self.frames[owner.name] != frame:
                _check_merge(seen, self.merges[name])
            return seen
        own_view = view if owner is level else "current"
        return self._seen(self._states(owner, own_view)[name], owner, frame, state=True)

    def _states(self, level: TokenLevel, view: str) -> dict:
        own = self.state[level.name]
        if view == "before":
            return self.before[level.name]
        if view == "snapshot" and level.chunk > 1:
            return {name: own.get(f"{name}.chunk_start", own[name]) for name in level.states}
        return own

    def _seen(self, value, owner: TokenLevel, frame: Frame, state: bool = False):
        source = self.frames[owner.name]
        if source is frame or (state and source == frame):   # another level's value: merged
            return value
        if state and source.heads is not None:
            raise NotImplementedError("a per-head state read from another frame")
        return source.merge(value, frame)

    def _apply(self, name: str, memory, u):
        """M(u): M u for a matrix memory, the forward pass for an MLP (runtime/mlp.py)."""
        layout = memory_layout(self.program, name)
        if layout is not None:
            return mlp.apply(layout, memory, u)
        return matmul(memory, u, 2, 1)

    def _conv(self, call: ast.Call, a, frame: Frame):
        site = self.program.convs[(call.span.line, call.span.col)]
        if site.param not in self.convs:
            merged = frame.merge(a, BASE)                          # [B, C]
            if site.param not in self.params:                      # construction's probe
                self.params[site.param] = merged.new_zeros(merged.shape[-1], site.width)
                self.state[STREAM][site.param] = merged.new_zeros(merged.shape[0], site.width - 1,
                                                                  merged.shape[-1])
            cache = self.state[STREAM][site.param]                 # [B, W-1, C]
            y, self.state[STREAM][site.param] = causal_conv(merged[:, None], self.params[site.param],
                                                            cache)
            self.convs[site.param] = y[:, 0]                       # [B, C]
        return BASE.merge(self.convs[site.param], frame)

    def _attend(self, call: ast.Call, q, keys: list, values: list, frame: Frame):
        """The attention at this call site for this token (runtime/attention.py's reference
        step), once per token whoever asks: it appends the token's keys and values to the
        site's cache in the state."""
        site = self.program.attention[(call.span.line, call.span.col)]
        if site.name not in self.attended:
            self.attended[site.name] = run_site(site, call, frame, q, keys, values,
                                                self.state[STREAM], self.params, self.t - 1,
                                                attend_token)
        return self.attended[site.name]

    def _period_mean(self, call: ast.Call, a, level: TokenLevel):
        """period_mean(a) at token t: (1 / n) sum of a over the n = (t - 1) mod N + 1 tokens of
        the level's current period so far, the running sum kept in the level's state as
        `period_mean@line:col.pending` (restarted at each period's first token). Once per
        token and call site, whoever asks (a context inlined into a loss asks again)."""
        site = (call.span.line, call.span.col)
        if site not in self.means:
            key = f"period_mean@{site[0]}:{site[1]}.pending"
            own = self.state[level.name]
            count = (self.t - 1) % level.period + 1
            own[key] = a if count == 1 or key not in own else own[key] + a
            self.means[site] = own[key] / count
        return self.means[site]


def _times(frame: Frame, a, b) -> torch.Tensor:
    a, b = frame.align(a, b)
    return a * b


def memory_layout(program: Program, name: str):
    """The MLPLayout of the MLP state or derived memory `name`, None for any other name."""
    owner = program.owner(name)
    if owner is not None and name in owner.memories:
        return owner.memories[name]
    state = owner.states.get(name) if owner is not None else None
    return state.mlp if state is not None else None


def _split(frame: Frame, value, step: HeadSplit):
    """The program's head split of a context: [B, 1, H*d] -> [B, H, d] (width H: [B, H])."""
    value = frame.split_as(value, step.heads, step.width)
    rank = frame.rank(value)
    heads_ok = step.heads == 1 or (isinstance(value, torch.Tensor)
                                   and value.shape[frame.prefix] == step.heads)
    width_ok = rank == 0 if step.width is None else rank >= 1 and value.shape[-1] == step.width
    if not (heads_ok and width_ok):
        found = list(value.shape) if isinstance(value, torch.Tensor) else value
        raise RuntimeError(f"the lowered head split of {step.name!r} ({step.heads} heads of width "
                           f"{step.width}) disagrees with the runtime's value {found}")
    return value


def _check_merge(value, step: HeadMerge) -> None:
    """A per-head read seen from another frame has width H * d, as the program says."""
    if not isinstance(value, torch.Tensor) or value.shape[-1] != step.merged:
        found = list(value.shape) if isinstance(value, torch.Tensor) else value
        raise RuntimeError(f"the lowered head merge of {step.read!r} (width {step.merged}) "
                           f"disagrees with the runtime's value {found}")
