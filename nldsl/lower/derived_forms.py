"""Recognise a level that reads through a derived memory as the derived-memory chunk form, by
structure, never by spec name.

The form (one `mlp(...)` state A per head without `layernorm`, chunk C > 1, written every
token by `gd` or `momentum` as in lower/deep_forms.py), where the level also holds derived
memories (lets of per-weight expressions of A, nldsl/language/memories.py) and

    the loss applies one memory D, as D(u) for one input u, with D = A or D = A + stopgrad(X)
        (the straight-through memory: value X(A), derivative with respect to A the identity,
        so G_t = grad_D loss_t at D(A_{t'}) is exactly the gradient the rule applies to A);
    the reads apply A or any derived memory R = f(A): y_t = R(A_t)(u_t) (a plain read: this
        token's state), or R(A_{t'})(u_t) (`before write`: the chunk start).

Moneta (R = A / ||A||_q^{q-2}, D = A + stopgrad(R - A)), Memora (R = c softmax(L)) and any
user spec of this structure take it. The gradients are the deep form's (one batched forward
and backward per chunk at D(A_{t'})) and A_t is linear in them; only f(A_t) is not, so
module/derived_chunk.py materialises A_t for the chunk's tokens and applies f per token.
A derived memory names only A, other derived memories and hyper-parameters (a gate inside f
would be per token; such a level runs the reference).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from nldsl.language import ast
from nldsl.language.consteval import calls_in, names_in
from nldsl.lower.derive import mentions
from nldsl.lower.forms import replace_applications
from nldsl.lower.program import Program, TokenLevel
from nldsl.lower.timing import states_through


@dataclass(frozen=True)
class DerivedForm:
    state: str
    loss: ast.Expr                 # uses memories only as trained(u), for one u
    trained: str                   # the memory the loss applies: the state or a straight-through let
    lr: ast.Expr
    decay: ast.Expr
    beta: ast.Expr | None          # momentum rule; None: gradient rule
    memories: dict[str, ast.Expr]  # derived memory -> its per-weight expression
    queries: dict[str, tuple[str, ast.Expr, bool]]   # placeholder -> (memory, u, before_write)
    reads: dict[str, ast.Expr]     # read name -> its expression with placeholders
    clip: ast.Expr | None = None   # the guard (docs/modules.md, "Stability"); None: no clipping
    #: derived memory -> (op, g) when it is `state / g` or `state * g` (either order): if g is
    #: a number per weight matrix, R_t h = (A_t h) / g_t is linear in A_t but for g_t
    scales: dict[str, tuple[str, ast.Expr]] = field(default_factory=dict)


def derived_form(level: TokenLevel, program: Program, leaves=frozenset()) -> DerivedForm | None:
    """The level's form, or None (then it runs in the reference schedule, or another form)."""
    if level.period != 1 or level.chunk <= 1 or len(level.states) != 1 or \
            len(level.writes) != 1 or not level.memories:
        return None
    (state,) = level.states.values()
    write, s = level.writes[0], state.name
    if state.mlp is None or state.mlp.norm or write.target != s or write.loss is None or \
            write.kind not in ("gradient", "momentum") or write.precondition is not None or \
            write.chain or set(level.hidden) - {f"{s}_momentum"} or \
            any(c.func == "window" for c in calls_in(write.loss)):
        return None
    memories = {name: level.contexts[name] for name in level.memories}
    weights = set(memories) | {s}
    if any(layout != state.mlp for layout in level.memories.values()) or \
            any(not _per_weight_of(e, weights, program) for e in memories.values()):
        return None
    fast = {n for lv in program.levels for n in list(lv.states) + list(lv.reads) + list(lv.hidden)}
    hidden = fast | set(memories)
    others = [v for n, v in level.contexts.items() if n not in memories]
    if any(mentions(v, n) for v in others for n in hidden) or any(
            states_through(v, program.levels, program.outer_contexts, leaves)[0] for v in others):
        return None
    gates = [write.lr, write.decay] + ([write.beta] if write.kind == "momentum" else []) + \
        ([write.clip] if write.clip is not None else [])
    if any(mentions(g, n) for g in gates for n in hidden):
        return None
    trained = _trained(write.loss, weights, hidden, s, memories)
    if trained is None:
        return None
    found, reads = {memory: {} for memory in sorted(weights)}, {}   # placeholders per memory
    for name, (value, before) in level.reads.items():
        for memory, applied in found.items():
            value = replace_applications(value, memory, before, applied)
        if any(mentions(value, n) for n in hidden):
            return None
        reads[name] = value
    queries = {p: (memory, u, before) for memory, applied in found.items()
               for p, (u, before) in applied.items()}
    if any(mentions(u, n) for _, u, _ in queries.values() for n in hidden):
        return None
    if any(mentions(program.output, n) for n in weights) or any(
            mentions(e, n) for lv in program.levels if lv is not level
            for e in list(lv.contexts.values()) + [r for r, _ in lv.reads.values()]
            for n in weights):
        return None
    scales = {name: scale for name, e in memories.items()
              if (scale := _scale_of(e, s)) is not None}
    return DerivedForm(s, write.loss, trained, write.lr, write.decay,
                       write.beta if write.kind == "momentum" else None, memories, queries,
                       reads, write.clip, scales)


def _scale_of(e: ast.Expr, s: str) -> tuple[str, ast.Expr] | None:
    """(op, g) for e = `s / g`, `s * g` or `g * s`; else None."""
    if not (isinstance(e, ast.Binary) and e.op in "*/"):
        return None
    if e.left == ast.Name(id=s):
        return e.op, e.right
    if e.op == "*" and e.right == ast.Name(id=s):
        return "*", e.left
    return None


def _per_weight_of(e: ast.Expr, weights: set[str], program: Program) -> bool:
    """Does the per-weight expression e name only the state, derived memories and numeric
    hyper-parameters, and apply no memory (a forward pass inside f)?"""
    return all(n.id in weights or isinstance(program.hparams.get(n.id), (int, float))
               for n in names_in(e)) and not any(c.func in weights for c in calls_in(e))


def _trained(loss: ast.Expr, weights: set[str], hidden: set[str], s: str,
             memories: dict) -> str | None:
    """The one memory the loss applies, all applications with one argument that names no fast
    value, when it is the state or a straight-through `s + stopgrad(X)`; else None."""
    applications = [c for c in calls_in(loss) if c.func in weights]
    if not applications or len({a.func for a in applications}) != 1 or \
            len({a.args[0] for a in applications if a.args}) != 1 or \
            any(len(a.args) != 1 or a.kwargs for a in applications) or \
            any(n.id in hidden for n in names_in(loss)) or \
            any(mentions(applications[0].args[0], n) for n in hidden):
        return None
    name = applications[0].func
    if any(mentions(loss, n) for n in hidden - {name}):
        return None
    return name if name == s or _straight_through(memories[name], s) else None


def _straight_through(e: ast.Expr, s: str) -> bool:
    """Is e `s + stopgrad(X)` (either order)? Its derivative with respect to s is the identity."""
    if not (isinstance(e, ast.Binary) and e.op == "+"):
        return False
    stopped = lambda a: isinstance(a, ast.Call) and a.func == "stopgrad" and len(a.args) == 1
    return (e.left == ast.Name(id=s) and stopped(e.right)) or \
        (e.right == ast.Name(id=s) and stopped(e.left))
