"""The `chunked` schedule: every token level whose update has a fast form runs over the whole
call at once; a module with a level that has none runs the reference (same values, slower).

Contexts, gates and `out` are evaluated once for all tokens (frame prefix [B, T]) by the same
evaluator the reference uses per token, except that without gradients a level's projections of
the input (`x @ W` with W a parameter) are one GEMM with the weights side by side (the same
products up to the GEMM's rounding, in one call). The recurrence of a linear memory
(lower/forms.py) is `delta_chunk.linear_delta_blocks`. `lower/schedule.plan_schedule` decides,
at construction, which levels have a fast path; `CompiledModule.fast_paths` shows it.
"""
from __future__ import annotations

import torch

from typing import NamedTuple

from nldsl.language import ast
from nldsl.language.consteval import children
from nldsl.lower.chain_forms import ChainForm
from nldsl.lower.deep_forms import DeepForm
from nldsl.lower.derived_forms import DerivedForm
from nldsl.lower.forms import LinearForm
from nldsl.lower.periodic_forms import PeriodicForm
from nldsl.lower.program import Program, TokenLevel
from nldsl.lower.schedule import STATELESS, run_order, segment_chunks
from nldsl.lower.snapshot_forms import SnapshotForm
from nldsl.lower.task import FrozenForm
from nldsl.lower.timing import snapshot_reads
from nldsl.module.chain_chunk import run_chain_level
from nldsl.module.deep_chunk import run_deep_level
from nldsl.module.derived_chunk import run_derived_level
from nldsl.module.delta_chunk import linear_delta_blocks
from nldsl.module.period_means import bind_period_means
from nldsl.module.periodic_chunk import run_periodic_level
from nldsl.module.reference import STREAM, finish, run_reference
from nldsl.runtime import mlp
from nldsl.runtime.attention import attend_sequence, run_site
from nldsl.module.snapshot_chunk import NotPerToken, run_snapshot_level
from nldsl.module import taskgrad
from nldsl.runtime.evaluate import FrameEvaluator
from nldsl.runtime.frame import Frame
from nldsl.runtime.functions import causal_conv

SEQUENCE = Frame(2)


class CallPlan(NamedTuple):
    """What every call needs of the program alone: the levels' run order
    (`schedule.run_order`), the chunks a call is cut at (`schedule.segment_chunks`) and the
    before-write reads known at a chunk's start (`timing.snapshot_reads`). They walk the
    expressions' trees, so the module computes them once, at construction (a stream of
    one-token segments calls the module per token)."""
    order: tuple[TokenLevel, ...]
    chunks: frozenset[int]
    leaves: frozenset[str]


def call_plan(program: Program) -> CallPlan:
    return CallPlan(tuple(run_order(program)), frozenset(segment_chunks(program)),
                    frozenset(snapshot_reads(program.levels)))


def fits(program: Program, params: dict, x: torch.Tensor, state: dict,
         forms: dict[str, LinearForm], plan: CallPlan) -> bool:
    """Do the forms' gates turn out one scalar per head on these tensors? (A channel-wise
    gate has the form's structure but not its shapes.) The module asks once, at construction."""
    values = _SequenceValues(program, params, x, state, plan.leaves)
    try:
        with torch.no_grad():
            for level in plan.order:
                values.run_level(level, forms[level.name], 1)
    except _NotThisForm:
        return False
    return True


def run_chunked(program: Program, params: dict, x: torch.Tensor, state: dict, end: bool,
                forms: dict[str, LinearForm], block: int, checkpoint: bool, plan: CallPlan):
    """`plan`: the program's `call_plan`, which the module computes once."""
    if not forms or x.shape[1] == 0:
        return run_reference(program, params, x, state, end)
    chunks, start, steps = plan.chunks, state[STREAM]["t"], x.shape[1]
    if not chunks:
        return _run_call(program, params, x, state, end, forms, block, checkpoint, plan)
    cuts = [0] + [i for i in range(1, steps) if any((start + i) % c == 0 for c in chunks)] + \
        [steps]
    ys = []
    for a, b in zip(cuts[:-1], cuts[1:]):                 # one chunk at a time (Titans MAC)
        y, state = _run_call(program, params, x[:, a:b], state, end and b == steps, forms, block,
                             checkpoint, plan)
        ys.append(y)
    return torch.cat(ys, dim=1), state


def _run_call(program: Program, params: dict, x: torch.Tensor, state: dict, end: bool,
              forms: dict[str, LinearForm], block: int, checkpoint: bool, plan: CallPlan):
    values = _SequenceValues(program, params, x, state, plan.leaves, checkpoint)
    try:
        for level in plan.order:
            values.run_level(level, forms[level.name], block)
    except _NotThisForm:
        return run_reference(program, params, x, state, end)
    y = values.evaluate(None, program.output)                     # [B, T, dim]
    new_state = values.new_state
    new_state[STREAM]["t"] = state[STREAM]["t"] + x.shape[1]
    if end:
        finish(program, new_state)
    return y, new_state


class _SequenceValues:
    """Names over a whole call: x [B, T, dim], t [1, T], contexts, and the reads of the
    levels already run."""

    def __init__(self, program: Program, params: dict, x: torch.Tensor, state: dict,
                 leaves: frozenset[str], checkpoint: bool = False):
        self.program, self.params, self.x, self.checkpoint = program, params, x, checkpoint
        self.new_state = {key: dict(value) for key, value in state.items()}
        self.start, self.leaves = state, leaves
        start = state[STREAM]["t"]
        # in x's dtype, as the reference's Python int t meets a tensor (exact below 2^24 in float32)
        self.t = torch.arange(start + 1, start + 1 + x.shape[1], dtype=x.dtype,
                              device=x.device).unsqueeze(0)                     # [1, T]
        self.frames = {level.name: Frame(2, level.heads) for level in program.levels}
        self.memo: dict[str, tuple[object, Frame]] = {}
        self.bound: dict[str, object] = {}
        self.convs: dict[str, torch.Tensor] = {}
        self.attended: dict[str, torch.Tensor] = {}
        self.products: dict[int, torch.Tensor] = {}               # id of an `x @ W` node -> value
        self.frozen: dict[str, TokenLevel] = {}                   # levels without writes here

    def evaluate(self, level: TokenLevel | None, expr: ast.Expr):
        frame = self.frames[level.name] if level is not None else SEQUENCE
        lookup = lambda name: self._lookup(name, frame)
        conv = lambda call, a, width: self._conv(call, a, frame)
        attend = lambda call, q, keys, values: self._attend(call, q, keys, values, frame)
        apply = (lambda name, u: self._apply_frozen(level, name, u)) \
            if level is not None and level.name in self.frozen else _no_memory
        return _Evaluator(frame, lookup, apply, conv, self.products, attend)(expr)

    def project(self, level: TokenLevel) -> None:
        """The level's contexts' `x @ W` products (W a 2-D parameter) as one GEMM, when there
        are several weights and no gradient: x [.., dim] @ [W_1 .. W_n] [dim, sum of widths],
        split. (With gradients each weight keeps its own product: through the concatenation a
        weight whose product the loss does not use would get a zero gradient instead of None.)"""
        if torch.is_grad_enabled():
            return
        nodes: dict[str, list[ast.Binary]] = {}
        for expr in level.contexts.values():
            for node in _nodes(expr):
                if (isinstance(node, ast.Binary) and node.op == "@" and _is_name(node.left, "x")
                        and isinstance(node.right, ast.Name) and node.right.id in self.params
                        and self.params[node.right.id].ndim == 2):
                    nodes.setdefault(node.right.id, []).append(node)
        if len(nodes) < 2 or "x" in self.bound:
            return
        weights = [self.params[name] for name in nodes]
        x = self._lookup("x", self.frames[level.name])                        # [B, T, (1,) dim]
        products = (x @ torch.cat(weights, dim=1)).split([w.shape[1] for w in weights], dim=-1)
        for same, product in zip(nodes.values(), products):
            self.products.update((id(node), product) for node in same)

    def prepare(self, level: TokenLevel, expr: ast.Expr) -> None:
        """Compute (and memoise) every context `expr` names over the whole call, so that its
        windowed evaluation inside a checkpointed chunk (deep_chunk.py) only slices values made
        outside: a checkpointed region must recompute everything it saved for backward."""
        frame = self.frames[level.name]
        for node in _nodes(expr):
            if isinstance(node, ast.Name) and node.id not in self.bound:
                owner = self.program.owner(node.id)
                if node.id in self.program.outer_contexts or (
                        owner is not None and node.id in owner.contexts):
                    self._lookup(node.id, frame)

    def evaluate_window(self, level: TokenLevel, expr: ast.Expr, start: int, stop: int, apply):
        """expr over the tokens [start, stop) of the call only, `apply(name, u)` computing a
        memory application (deep_chunk.py's loss at a chunk's snapshot)."""
        frame, steps = self.frames[level.name], self.x.shape[1]
        window = lambda v: v[:, start:stop] if isinstance(v, torch.Tensor) and v.ndim >= 2 \
            and v.shape[1] == steps else v
        lookup = lambda name: window(self._lookup(name, frame))
        return FrameEvaluator(frame, lookup, apply, _no_conv)(expr)

    def run_level(self, level: TokenLevel, form: LinearForm | DeepForm, block: int) -> None:
        frame = self.frames[level.name]
        bsz, steps = self.x.shape[:2]
        heads = level.heads or 1
        per_head = lambda value, width: _heads_first(frame, value, self.x, heads, width)
        if isinstance(form, FrozenForm):
            self.frozen[level.name] = level                       # its reads: when asked
            bind_period_means(self, level, self.new_state[level.name], self.new_state[STREAM]["t"])
            return
        self.project(level)
        if form == STATELESS:                 # reads are evaluated where they are used
            return
        if isinstance(form, DeepForm):
            run_deep_level(self, level, form, per_head)
            return
        if isinstance(form, DerivedForm):
            run_derived_level(self, level, form, per_head)
            return
        if isinstance(form, ChainForm):
            run_chain_level(self, level, form, per_head)
            return
        if isinstance(form, PeriodicForm):
            run_periodic_level(self, level, form, per_head, block)
            return
        if isinstance(form, SnapshotForm):
            try:
                run_snapshot_level(self, level, form)
            except NotPerToken as err:
                raise _NotThisForm(err) from None
            return
        s0 = self.new_state[level.name][form.state]               # [B, (H,) dv, dk]
        dv, dk = s0.shape[-2:]
        a, c = self.evaluate(level, form.decay), self.evaluate(level, form.erase)
        a = None if _number(a, 1) else per_head(a, None)           # [B, H, T]; None: no decay
        c = None if _number(c, 0) else per_head(c, None)           # None: no erase term
        k = per_head(self.evaluate(level, form.key), dk)          # [B, H, T, dk]
        w = per_head(self.evaluate(level, form.write), dv)        # [B, H, T, dv]
        queries = [(per_head(self.evaluate(level, q), dk), before)
                   for q, before in form.queries.values()]
        s0 = s0 if level.heads is not None else s0.unsqueeze(1)
        if not level.backprop:
            detach = lambda t: t.detach() if t is not None else None
            a, c, k, w, s0 = (detach(t) for t in (a, c, k, w, s0))
        ys, s_end = linear_delta_blocks(s0.transpose(-1, -2), a, c, k, w, queries, block)
        s_end = s_end.transpose(-1, -2)                           # [B, H, dv, dk]
        self.new_state[level.name][form.state] = s_end if level.heads is not None else s_end[:, 0]
        for name, y in zip(form.queries, ys):
            y = y.transpose(1, 2)                                 # [B, T, H, dv]
            self.bound[name] = y if level.heads is not None else y[:, :, 0]
        for name, expr in form.reads.items():
            self.memo[name] = (self.evaluate(level, expr), frame)

    def _lookup(self, name: str, frame: Frame):
        program = self.program
        if name in self.bound:
            return self.bound[name]
        if name == "x":
            return SEQUENCE.merge(self.x, frame)
        if name == "t":
            return self.t if frame.heads is None else self.t.unsqueeze(-1)
        if name in program.hparams:
            return program.hparams[name]
        if name in self.params:
            return frame.lift(self.params[name])
        if name in program.outer_contexts:
            if name not in self.memo:
                self.memo[name] = (self.evaluate(None, program.outer_contexts[name]), SEQUENCE)
            return self._seen(name, frame)
        owner = program.owner(name)
        if owner is not None and name in owner.contexts and name not in self.memo:
            self.memo[name] = (self.evaluate(owner, owner.contexts[name]), self.frames[owner.name])
        if owner is not None and owner.name in self.frozen:
            return self._frozen(owner, name, frame)
        if owner is not None and not owner.states and name in owner.reads and name not in self.memo:
            self.memo[name] = (self.evaluate(owner, owner.reads[name][0]), self.frames[owner.name])
        if owner is not None and name in self.leaves and name not in self.memo:
            self.memo[name] = (self._snapshot_read(owner, name), self.frames[owner.name])
        if name not in self.memo:
            raise KeyError(f"{name} is not available to the chunked schedule")
        return self._seen(name, frame)

    def _frozen(self, level: TokenLevel, name: str, frame: Frame):
        """A name of a level without writes: its state, constant over the call ([B, 1, ...]:
        the T axis broadcasts), or a read of it, evaluated once for all tokens."""
        own = self.frames[level.name]
        if name in level.states:
            value = self.new_state[level.name][name].unsqueeze(1)    # [B, 1, *shape]
            return value if own == frame else own.merge(value, frame)
        if name in level.reads and name not in self.memo:
            # in the level's frame, its states applied by `_apply_frozen` (`evaluate`)
            self.memo[name] = (self.evaluate(level, level.reads[name][0]), own)
        return self._seen(name, frame)

    def _apply_frozen(self, level: TokenLevel, name: str, u):
        """M(u) for a state M of a frozen level, every token at once: one batched GEMM per
        layer, u [B, T, d_in] @ W^T [B, d_in, d_out] (not one product per token)."""
        memory = self.new_state[level.name][name]            # [B, (H,) P] or [B, (H,) dv, dk]
        layout, recorded = level.states[name].mlp, taskgrad.product(memory)
        if level.heads is not None:        # u [B, T, H, d_0]: one memory per head, broadcast
            if layout is None:
                return (memory.unsqueeze(1) @ u.unsqueeze(-1)).squeeze(-1)     # [B, T, H, dv]
            return mlp.apply(layout, memory.unsqueeze(1), u)                 # [B, T, H, d_L]
        if layout is None:
            return u @ memory.mT if recorded is None else recorded(0, u, memory)  # [B, T, dv]
        return mlp.apply_to_sequence(layout, memory, u, recorded)     # [B, T, d_L]

    def _snapshot_read(self, level: TokenLevel, name: str):
        """A before-write read of a deep level before it runs: the call lies inside one of its
        chunks (run_chunked cuts it so), so the read is of the chunk-start state, the same
        for every token of the call (the state itself at a chunk boundary)."""
        own, start = self.start[level.name], self.start[STREAM]["t"]

        def apply(memory: str, u):
            flat = own[memory] if start % level.chunk == 0 else \
                own.get(f"{memory}.chunk_start", own[memory])
            return mlp.apply(level.states[memory].mlp, flat.unsqueeze(1), u)   # [B, 1, (H,) P]
        return self.evaluate_window(level, level.reads[name][0], 0, self.x.shape[1], apply)

    def _seen(self, name: str, frame: Frame):
        value, source = self.memo[name]                  # another level's value: merged
        return value if source is frame else source.merge(value, frame)

    def _conv(self, call: ast.Call, a, frame: Frame):
        site = self.program.convs[(call.span.line, call.span.col)]
        if site.param not in self.convs:
            merged = frame.merge(a, SEQUENCE)                     # [B, T, C]
            cache = self.new_state[STREAM][site.param]            # [B, W-1, C]
            y, self.new_state[STREAM][site.param] = causal_conv(merged, self.params[site.param], cache)
            self.convs[site.param] = y
        return SEQUENCE.merge(self.convs[site.param], frame)


    def _attend(self, call: ast.Call, q, keys: list, values: list, frame: Frame):
        """The attention at this call site over the whole call (scaled_dot_product_attention,
        runtime/attention.py), once: its cache in the new state moves past the call."""
        site = self.program.attention[(call.span.line, call.span.col)]
        if site.name not in self.attended:
            self.attended[site.name] = run_site(site, call, frame, q, keys, values,
                                                self.new_state[STREAM], self.params,
                                                self.new_state[STREAM]["t"], attend_sequence)
        return self.attended[site.name]


class _Evaluator(FrameEvaluator):
    """FrameEvaluator that takes the value of an `x @ W` node from `products` when it is there."""

    def __init__(self, frame, lookup, apply, conv, products: dict[int, torch.Tensor], attend=None):
        super().__init__(frame, lookup, apply, conv, attend=attend)
        self.products = products

    def __call__(self, expr: ast.Expr):
        product = self.products.get(id(expr))
        return product if product is not None else super().__call__(expr)


def _nodes(expr: ast.Node):
    yield expr
    for child in children(expr):
        yield from _nodes(child)


def _is_name(expr: ast.Expr, name: str) -> bool:
    return isinstance(expr, ast.Name) and expr.id == name


def _number(value, number: float) -> bool:
    """A gate that evaluated to this constant (a literal or hyper-parameter): decay 1 needs no
    decay products, erase 0 no erase term."""
    return not isinstance(value, torch.Tensor) and value == number


def _no_memory(name, u):
    raise KeyError(f"memory {name} applied outside its fast path")


def _no_conv(call, a, width):
    raise KeyError("a conv inside a windowed expression (its cache follows the whole call)")


def _heads_first(frame: Frame, value, x: torch.Tensor, heads: int, width: int | None):
    """A per-head scalar (width None) or vector of the sequence frame as [B, H, T(, width)]."""
    bsz, steps = x.shape[:2]
    if not isinstance(value, torch.Tensor):
        if width is not None:
            raise _NotThisForm(value)
        return x.new_full((bsz, heads, steps), float(value))
    value = frame.split_as(value, heads, width)   # width 1 vs one scalar per head: by use
    rank = frame.rank(value)
    if width is None and rank == 1 and value.shape[-1] == 1:
        value, rank = value.squeeze(-1), 0         # a gate of width 1 is one number per token
    if (width is None) != (rank == 0) or rank > 1:
        raise _NotThisForm(value.shape)
    if frame.heads is None:
        value = value.unsqueeze(2)                                # [B, T, 1, ..]
    shape = (bsz, steps, heads) + ((width,) if width is not None else ())
    return value.expand(shape).movedim(2, 1)                     # [B, H, T, ..]


class _NotThisForm(Exception):
    """A gate turned out not to be one scalar per head (a channel-wise gate)."""
