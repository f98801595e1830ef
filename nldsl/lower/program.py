"""The module program: a module spec lowered for concrete hyper-parameter values. Pure data.

Everything the spec leaves implicit is explicit here: periods, chunks and heads as integers
(evaluated from the values actually passed), the outer parameters with their shapes (conv
kernels one per call site, learned initial states with their owner), each rule's hidden states
(a momentum buffer), and each level's writes split into the parts the frequency semantics
treat differently (docs/language.md, "Frequency and chunk semantics"):

    gradient write   S <- decay * S - lr * G,   G = grad L at the chunk-start state
                     (with `precondition` k: - lr * (S k) k^T besides, S the previous token's
                     state, on the weight that multiplies k: NL eqs. 88, 90)
    momentum write   m <- beta * m - lr * G;    S <- decay * S + m       (Titans eqs. 13-14)
    explicit write   S <- value,                evaluated on S_{t-1}
    task write       S <- decay * S - lr * G,   G = grad of the outer task loss at S, summed
                     over the level's period; applied by the task driver, never by the
                     module itself (module/task.py, docs/modules.md "Levels that learn from
                     the task loss")

A rule chain `r1 then ... then rn` is a gradient or momentum write (its last rule) whose G is
first transformed by `chain` (lower/derive.py's `ChainStep`s: momentum and ema through a hidden
buffer, newton_schulz per weight matrix). A `window(c, loss, gamma)` objective (Atlas' Omega
rule) sums its loss over the last c tokens: the level keeps the values of the contexts it names
for the c - 1 tokens before this one (`windowed`, a ring buffer in the state).

Two more things are explicit per token level: the head split and merge (`HeadSplit` for each
context entering a `heads H` level, `HeadMerge` for each read leaving it, widths computed by
`lower/heads.py`), and when within a token each context and read is evaluated (`Placement`,
computed by `lower/timing.py`). `lower/forms.py` recognises a level's writes as a known form
for the fast schedules.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

from nldsl.language import ast


@dataclass(frozen=True)
class Param:
    """An outer-level parameter: a state declared outside the levels, a conv kernel, or the
    learned initial value of a fast state (`owner` is the level that learns it)."""

    name: str
    shape: tuple[int, ...]
    init: ast.Expr | None          # None: the documented default for its role
    role: str = "state"            # state | conv | initial
    owner: str = "outer"


@dataclass(frozen=True)
class MLPLayout:
    """An `mlp(d_0 -> d_1 -> ... -> d_L, act, residual, layernorm)` memory's weights, end to end.

    The schedules keep an MLP state as one flat vector [B, (H,) P], so the rules' arithmetic
    (`decay S - lr G`, momentum, pending sums) is the same elementwise code as for a matrix, and
    `a S + b N` on two MLP states of one layout is per weight (docs/modules.md). The parts are
    the layers, part i the slice offsets[i]:offsets[i+1] seen as [d_{i+1}, d_i], then, with
    `layernorm`, the norm's gamma [d_L]:

        M(u) = W_L act(... act(W_1 u))                          (+ u when residual)
        M(u) = LN(W_L act(... act(W_1 u))) * (gamma + 1)        (+ u when residual)
    """

    widths: tuple[int, ...]
    activation: str
    residual: bool
    norm: bool = False             # `layernorm`: LN without affine, times (gamma + 1)

    # the derived shapes are cached: the schedules ask for them on every call, per state

    @cached_property
    def layers(self) -> tuple[tuple[int, int], ...]:
        """(d_out, d_in) per layer."""
        return tuple(zip(self.widths[1:], self.widths[:-1]))

    @cached_property
    def parts(self) -> tuple[tuple[int, ...], ...]:
        """The shape of each weight: the layers' (d_out, d_in), then gamma's (d_L,) if norm."""
        return self.layers + (((self.widths[-1],),) if self.norm else ())

    @property
    def part_names(self) -> tuple[str, ...]:
        """The suffix of each part's learned initial Param: `_w1`, ..., `_wL`, `_gamma`."""
        return tuple(f"_w{i + 1}" for i in range(len(self.layers))) + \
            (("_gamma",) if self.norm else ())

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        ends = [0]
        for shape in self.parts:
            ends.append(ends[-1] + math.prod(shape))
        return tuple(ends)

    @cached_property
    def size(self) -> int:
        return self.offsets[-1]


@dataclass(frozen=True)
class FastState:
    """A state of a token level, once per sequence (and per head): [B, (H,) *shape]; an MLP
    state's shape is (P,), its weights flat (`mlp` says how)."""

    name: str
    shape: tuple[int, ...]
    init: ast.Expr | None          # None with `learned`: starts from Param `initial`
    learned: str | None = None     # the Param holding the learned initial value (MLP: its
    #                                prefix; part i is Param learned + mlp.part_names[i])
    mlp: MLPLayout | None = None
    #: (level, state): a nested CMS block (NL eq. 72) restarts from that level's state at the
    #: start of each of its periods (lower/task.py, `nest_inits`)
    restart: tuple[str, str] | None = None


@dataclass(frozen=True)
class ConvSite:
    """`conv(a, width)` at one place in the spec: its kernel Param and where it is."""

    param: str
    width: int
    line: int
    col: int


@dataclass(frozen=True)
class AttentionSite:
    """`attention`, `window_attention` or `segment_attention` at one place in the spec.

    `name` keys its key-value cache in the state (`state["_stream"][name + ".keys"]`, `.values`),
    `kind` is full | window | segment, `width` the window or segment size (None: full),
    `streams` how many key-value streams share the positions (a tuple `(k_1, k_2)`: Titans
    MAC's memory read beside the segment), `prefix` the outer states (P_k, P_v) that every
    query also attends to (persistent memory), or None."""

    name: str
    kind: str
    width: int | None
    streams: int
    prefix: tuple[str, str] | None
    line: int
    col: int

    @property
    def kept(self) -> int | None:
        """Past positions the cache keeps: all (None), or the last width - 1."""
        return None if self.width is None else self.width - 1


@dataclass(frozen=True)
class ModuleWrite:
    target: str
    kind: str                      # gradient | momentum | explicit | task
    value: ast.Expr | None = None  # explicit: the new value
    grad: ast.Expr | None = None   # closed-form gradient (names the state: its chunk-start value)
    loss: ast.Expr | None = None   # otherwise: the loss, differentiated by autograd
    lr: ast.Expr | None = None
    decay: ast.Expr | None = None
    beta: ast.Expr | None = None   # momentum
    precondition: ast.Expr | None = None   # dgd(precondition = true): the key k of eq. 88's
    #                                 (decay I - lr k k^T), applied to the previous token's state
    derivation: str = "explicit"
    chain: tuple = ()              # the ChainSteps that transform G before the rule applies it
    clip: ast.Expr | None = None   # the guard: G <- G min(1, clip / ||G||_F) per weight matrix


@dataclass(frozen=True)
class HeadSplit:
    """A context entering a `heads H` level: a value of width H * d seen as H heads of width d
    (`width` None: a value of width H, one scalar per head). docs/language.md, "Heads": the
    split happens where a function or memory first takes the value; a context that no split
    lists (its width is not a multiple of H) is the same for every head."""

    name: str
    heads: int
    width: int | None


@dataclass(frozen=True)
class HeadMerge:
    """A read leaving a `heads H` level: H heads of width d seen outside as width H * d
    (`width` None: one scalar per head, seen as width H)."""

    read: str
    heads: int
    width: int | None

    @property
    def merged(self) -> int:
        return self.heads * (self.width or 1)


#: When, within one token, a level's context or read is evaluated (docs/language.md,
#: "Frequency and chunk semantics"). A context is evaluated once per token, before any write,
#: and a read that uses it sees that value: contexts are never re-evaluated after a write.
INPUT = "input"                    # no state: from x, t, parameters and conv caches
SNAPSHOT = "snapshot"              # the level's own states at the chunk start (chunk 1: S_{t-1})
BEFORE_WRITES = "before writes"    # another level's states, as they were before this token's writes
AFTER_WRITE = "after write"        # a plain read: the state this token's write produced
BEFORE_WRITE = "before write"      # `read ... before write`: the state the write started from
STAGES = (INPUT, SNAPSHOT, BEFORE_WRITES, AFTER_WRITE, BEFORE_WRITE)


@dataclass(frozen=True)
class Placement:
    """Where a context or read is evaluated: its stage, the fast states its value depends on
    (through contexts too) and the contexts it uses (each evaluated at its own stage)."""

    stage: str
    states: tuple[str, ...] = ()
    contexts: tuple[str, ...] = ()


@dataclass(frozen=True)
class TokenLevel:
    name: str
    period: int
    chunk: int
    heads: int | None
    backprop: bool
    partial: str                   # flush | drop
    states: dict[str, FastState]
    contexts: dict[str, ast.Expr]
    writes: list[ModuleWrite]
    reads: dict[str, tuple[ast.Expr, bool]]     # name -> (value, before_write)
    hidden: dict[str, tuple[int, ...]] = field(default_factory=dict)  # momentum buffers
    splits: tuple[HeadSplit, ...] = ()          # contexts entering the heads (heads H only)
    merges: tuple[HeadMerge, ...] = ()          # reads leaving them (heads H only)
    placements: dict[str, Placement] = field(default_factory=dict)    # context or read -> when
    task: tuple[ModuleWrite, ...] = ()          # `minimize task` writes: the task driver's
    #                                             (then `writes` is empty: inside the module the
    #                                             level is frozen between the driver's writes)
    window: int = 1                # the longest `window(c, ...)` of its objectives: c tokens
    windowed: tuple[str, ...] = () # the contexts those windows see at past tokens

    #: lets that hold a per-weight expression of MLP states (derived memories, nldsl/language/memories.py):
    #: evaluated layer by layer, at the view of whoever uses them (docs/language.md)
    memories: dict[str, MLPLayout] = field(default_factory=dict)
    once: bool = False             # one rule step per period, from the period's summed gradients

    def buffer_state(self, hidden: str) -> str:
        """The state a hidden buffer (`M_momentum`, `M_ema1`) is shaped like."""
        return max((s for s in self.states if hidden.startswith(s + "_")), key=len)


@dataclass(frozen=True)
class Program:
    name: str
    dim: int
    hparams: dict[str, object]     # every hyper-parameter's value
    params: dict[str, Param]
    outer_contexts: dict[str, ast.Expr]
    levels: list[TokenLevel]       # in update order: fastest first, dependencies first
    output: ast.Expr
    convs: dict[tuple[int, int], ConvSite]      # (line, col) of the call -> site
    attention: dict[tuple[int, int], AttentionSite] = field(default_factory=dict)

    def level(self, name: str) -> TokenLevel:
        return next(level for level in self.levels if level.name == name)

    def owner(self, name: str) -> TokenLevel | None:
        """The token level that defines `name` (state, hidden state, context or read)."""
        for level in self.levels:
            if (name in level.states or name in level.contexts or name in level.reads
                    or name in level.hidden):
                return level
        return None
