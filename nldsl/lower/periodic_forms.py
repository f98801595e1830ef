"""Recognise a `once` level's update as the periodic form, by structure, never by spec name.

The form (one `mlp(...)` memory M per head, with or without `layernorm`, written `every N tokens
... once`, chunk C a multiple of N, as the validator has it): period n (tokens
t_{n-1} < t <= t_n = nN) takes one rule step from the sum of its tokens' gradients, each at its
chunk's snapshot M_{t'} (docs/language.md, "once"), with the rule's arguments of the period's
last token:

    G_n = sum_{t in n} grad_M loss_t(M(u_t)) at M_{t'}
    gradient rule   M_n = decay_{t_n} M_{n-1} - lr_{t_n} G_n
    momentum rule   S_n = beta_{t_n} S_{n-1} - lr_{t_n} G_n,   M_n = decay_{t_n} M_{n-1} + S_n

and a plain read at token t sees M_{floor(t / N)}: the memory is frozen between writes. So the
reads of a period are one batched forward at one state, every gradient of a chunk comes from
one forward and backward at its snapshot (per-token factors, summed per period by a batched
matmul, module/periodic_chunk.py), and only the rule step runs once per period.
titans-pytorch's NeuralMemory (`titans_pytorch`, `titans_pytorch_single_head`: per-token theta
inside the loss, chunk-mean gates by `period_mean`) and any user spec of this structure take it.

Conditions: the loss uses M only as M(u), for one u that depends on no fast state (as
deep_forms.py); lr, decay, beta and every context depend on no fast state; `period_mean` only
inside contexts (module/periodic_chunk.py evaluates them with the period's running means); no
guard, rule chain, preconditioner, window or derived memory; reads plain (after the write), and
M not seen outside its level.
"""
from __future__ import annotations

from dataclasses import dataclass

from nldsl.language import ast
from nldsl.language.consteval import calls_in
from nldsl.lower.deep_forms import memory_uses
from nldsl.lower.program import Program, TokenLevel


@dataclass(frozen=True)
class PeriodicForm:
    state: str
    loss: ast.Expr                 # uses the state only as state(u), for one u
    lr: ast.Expr
    decay: ast.Expr
    beta: ast.Expr | None          # momentum rule; None: gradient rule
    queries: dict[str, ast.Expr]   # placeholder -> u, read after the period's write
    reads: dict[str, ast.Expr]     # read name -> its expression with placeholders


def periodic_form(level: TokenLevel, program: Program, leaves=frozenset()) -> PeriodicForm | None:
    """The level's form, or None (the level then needs another form or the reference)."""
    if not level.once or level.task or len(level.states) != 1 \
            or len(level.writes) != 1 or level.window > 1 or level.memories:
        return None
    (state,) = level.states.values()
    write, s = level.writes[0], state.name
    if state.mlp is None or write.target != s or write.loss is None or write.grad is not None \
            or write.kind not in ("gradient", "momentum") or write.precondition is not None \
            or write.clip is not None or write.chain or set(level.hidden) - {f"{s}_momentum"}:
        return None
    gates = [write.lr, write.decay] + ([write.beta] if write.kind == "momentum" else [])
    if any(c.func in ("period_mean", "window") for e in gates + [write.loss]
           for c in calls_in(e)):
        return None                  # a running mean outside a context: the reference's
    uses = memory_uses(level, program, s, write.loss, gates, leaves)
    if uses is None:
        return None
    queries, reads = uses
    if any(before for _, before in queries.values()):
        return None                  # a read of the chunk's snapshot: the reference's
    return PeriodicForm(s, write.loss, write.lr, write.decay,
                        write.beta if write.kind == "momentum" else None,
                        {name: u for name, (u, _) in queries.items()}, reads)
