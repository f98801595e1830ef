"""The Omega rule's sliding window (Atlas eq. 9, NL eq. 68) in a module level. Pure, no torch.

    window(c, loss, gamma)  at token t  =  sum_{i = max(1, t-c+1)}^{t} gamma_i * loss_i(S)

loss_i is the loss with the level's contexts at token i (their values when token i was
computed) and the states where the objective differentiates them (the chunk-start snapshot);
gamma_i is gamma at token i (default 1). The window starts with the stream: at t < c it holds t
tokens. So that a stream cut anywhere computes the same values, the level keeps the contexts the
windows name for the c - 1 tokens before the current one in its per-sequence state
(docs/modules.md, "Parameters and state"). A window sees past tokens only through those
contexts: its loss and gamma may name the level's states and contexts, hyper-parameters and
the outer level's states; anything else (`x`, `t`, an outer context, another level's value) is a
located error, because its past values are not kept (`window_problems`).
"""
from __future__ import annotations

from nldsl.language import ast
from nldsl.language.consteval import calls_in, names_in
from nldsl.lower.derive import mentions

WINDOW = "window"


def window_calls(expr: ast.Expr) -> list[ast.Call]:
    return [c for c in calls_in(expr) if c.func == WINDOW]


def windowed_parts(call: ast.Call) -> list[ast.Expr]:
    """The expressions a window evaluates at past tokens: its loss and gamma."""
    return list(call.args[1:3]) + [k.value for k in call.kwargs if k.name in ("loss", "gamma")]


def own_contexts(contexts: dict[str, ast.Expr], states) -> dict[str, ast.Expr]:
    """The contexts whose value depends on one of `states` (transitively, through contexts)."""
    own: dict[str, ast.Expr] = {}
    changed = True
    while changed:
        changed = False
        for name, value in contexts.items():
            if name not in own and any(mentions(value, s) for s in list(states) + list(own)):
                own[name] = value
                changed = True
    return own


def windowed_contexts(loss: ast.Expr, contexts: dict[str, ast.Expr]) -> tuple[str, ...]:
    """The level's contexts that the windows of `loss` (own contexts already inlined) see at
    past tokens, in declaration order."""
    named = {n.id for call in window_calls(loss) for part in windowed_parts(call)
             for n in names_in(part)}
    return tuple(name for name in contexts if name in named)


def window_problems(level, graph, report) -> None:
    """Report every name a window of `level` cannot see at past tokens (module above)."""
    contexts = {c.name: c.value for c in level.contexts.values()}
    own = own_contexts(contexts, level.states)
    outer, hparams = graph.levels["outer"].states, graph.hparams
    for objective in level.objectives:
        for call in window_calls(objective.loss):
            for part in windowed_parts(call):
                for name in _names(part, own, set()):
                    if name.id in level.states or name.id in contexts or name.id in outer or \
                            name.id in hparams:
                        continue
                    report(name, f"`window` sees past tokens through the level's contexts, and "
                           f"{name.id!r} is not one of them", "the level's contexts and states, "
                           "hyper-parameters and outer states inside `window(...)`",
                           f"define a context of level {level.name!r} for it (`let "
                           f"{name.id}_i = {name.id}`) and use that")


def _names(expr: ast.Expr, own: dict, seen: set) -> list[ast.Name]:
    """The names of `expr`, looking through the contexts that use the level's own states (they
    are inlined into the loss, lower/module.py)."""
    found = []
    for name in names_in(expr):
        if name.id in own and name.id not in seen:
            seen.add(name.id)
            found += _names(own[name.id], own, seen)
        elif name.id not in own:
            found.append(name)
    return found
