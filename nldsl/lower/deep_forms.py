"""Recognise a level's update as the deep-memory chunk form, by structure, never by spec name.

The form (one `mlp(...)` memory M per head without `layernorm`, chunk C > 1, written every
token):

    G_t = grad_M loss_t(M(u_t)) at M_{t'}     (t' the start of t's chunk: Titans eq. 16)
    gradient rule   M_t = decay_t M_{t-1} - lr_t G_t
    momentum rule   S_t = beta_t S_{t-1} - lr_t G_t,   M_t = decay_t M_{t-1} + S_t  (eqs. 13-14)

with lr, decay, beta (and the guard's bound `clip`) one number per head and token, and a loss
that uses M only as M(u), for one input u (Yaad's Huber loss names M(k) three times) that depends on no fast state. Titans' LMM, Yaad (Huber loss) and any user spec
with this structure take it. Because every token of a chunk differentiates at the same state,
all per-token gradients of a chunk come from one batched forward and backward pass, and each
is a sum of rank-one terms per layer, G_t = sum_i delta_{i,t} a_{i-1,t}^T (no bias: the
gradient of a linear layer W a is delta a^T whatever the loss); module/deep_chunk.py turns the
recurrence into masked matmuls over the chunk.
"""
from __future__ import annotations

from dataclasses import dataclass

from nldsl.language import ast
from nldsl.language.consteval import calls_in, names_in
from nldsl.lower.derive import mentions
from nldsl.lower.forms import NoForm, read_queries
from nldsl.lower.program import Program, TokenLevel
from nldsl.lower.timing import states_through


@dataclass(frozen=True)
class DeepForm:
    state: str
    loss: ast.Expr                 # uses the state only as state(u), for one u
    lr: ast.Expr
    decay: ast.Expr
    beta: ast.Expr | None          # momentum rule; None: gradient rule
    queries: dict[str, tuple[ast.Expr, bool]]   # placeholder -> (u, before_write)
    reads: dict[str, ast.Expr]     # read name -> its expression with placeholders
    clip: ast.Expr | None = None   # the guard (docs/modules.md, "Stability"); None: no clipping


def deep_form(level: TokenLevel, program: Program, leaves=frozenset()) -> DeepForm | None:
    """The level's form, or None (the level then runs in the reference schedule). `leaves`
    (lower/timing.snapshot_reads) are before-write reads the schedule knows before the level
    writes, when it runs one chunk at a time: contexts may depend on them (Titans MAC)."""
    if level.period != 1 or level.chunk <= 1 or len(level.states) != 1 or len(level.writes) != 1:
        return None
    (state,) = level.states.values()
    write = level.writes[0]
    s = state.name
    if state.mlp is None or state.mlp.norm or write.target != s or write.loss is None or \
            write.kind not in ("gradient", "momentum") or write.precondition is not None:
        return None     # `layernorm` memories: module/deep_chunk.py has no LayerNorm backward
    if set(level.hidden) - {f"{s}_momentum"} or write.chain or \
            any(c.func == "window" for c in calls_in(write.loss)):
        return None
    gates = [write.lr, write.decay] + ([write.beta] if write.kind == "momentum" else []) + \
        ([write.clip] if write.clip is not None else [])
    uses = memory_uses(level, program, s, write.loss, gates, leaves)
    if uses is None:
        return None
    queries, reads = uses
    return DeepForm(s, write.loss, write.lr, write.decay,
                    write.beta if write.kind == "momentum" else None, queries, reads, write.clip)


def memory_uses(level: TokenLevel, program: Program, s: str, loss: ast.Expr, gates: list,
                leaves=frozenset()) -> tuple[dict, dict] | None:
    """What every deep-memory form asks of how its level uses the memory s: contexts and gates
    free of fast states (directly, or through other levels' contexts but the `leaves`), a loss
    that applies s only as s(u) for one u free of fast states and names no other fast state,
    reads of the forms.read_queries shape, and s read nowhere outside its level. Returns the
    reads' (queries, reads), or None."""
    fast = {n for lv in program.levels for n in list(lv.states) + list(lv.reads) + list(lv.hidden)}
    if any(mentions(value, n) for value in level.contexts.values() for n in fast) or any(
            states_through(value, program.levels, program.outer_contexts, leaves)[0]
            for value in level.contexts.values()):
        return None                        # directly, or through other levels' contexts
    if any(mentions(g, n) for g in gates for n in fast):
        return None
    applications = [c for c in calls_in(loss) if c.func == s]
    if not applications or len({a.args[0] for a in applications}) != 1 or \
            any(len(a.args) != 1 or a.kwargs for a in applications) or \
            any(n.id == s for n in names_in(loss)) or \
            any(mentions(applications[0].args[0], n) for n in fast) or \
            any(mentions(loss, n) for n in fast - {s}):
        return None
    try:
        queries, reads = read_queries(level, s)
    except NoForm:
        return None
    if mentions(program.output, s) or any(
            mentions(e, s) for lv in program.levels if lv is not level
            for e in list(lv.contexts.values()) + [r for r, _ in lv.reads.values()]):
        return None
    return queries, reads
