"""One module token built from a drawn `Unit`, and each derived write of its Program set against
the autograd step of the objective it came from.

The module is the compiler's (`nldsl.compile(spec, schedule="reference")`, float64). Its
parameters, every fast state (and momentum buffer, and conv cache) and the token x_t are drawn
standard normal from the unit's seed, so keys, values and gates are what the spec computes from
them (an `l2norm` key has norm 1, a `sigmoid` gate lies in (0, 1)). The compiled side is one
token of the reference schedule, the state it writes; the expected side is the rule applied to
torch.autograd's gradient of the level's objective, with the level's contexts that use its own
states substituted into the loss (so the gradient flows through them, as lower/module.py does).
"""
from __future__ import annotations

import copy

import torch

from nldsl.language import ast
from nldsl.checking.optimizer_units import Comparison
from nldsl.checking.rules import autograd_gradient, chain_direction, dgd_key, step_rule
from nldsl.language.consteval import names_in
from nldsl.module.reference import STREAM, run_reference
from nldsl.module.unit import UnitValues
from nldsl.lower.derive import rule_arguments
from nldsl.language.printer import format_expr
from nldsl.runtime import mlp


def drawn_module(spec, values: dict, seed: int, schedule: str = "reference", block_size: int = 64):
    """The compiled module in float64 with every parameter drawn standard normal from `seed`,
    scaled by 1/sqrt(fan in) for matrices (so products of drawn values stay O(1))."""
    from nldsl.module import compile as compile_module

    torch.manual_seed(seed)
    module = compile_module(spec, schedule=schedule, block_size=block_size, **values).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            scale = p.shape[0] ** -0.5 if p.ndim == 2 else 1.0
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
    return module


def drawn_state(module, batch: int, t: int, gen) -> dict:
    """The module's state after t tokens, its tensors drawn standard normal."""
    state = module.initial_state(batch)
    for key, own in state.items():
        for name, value in own.items():
            if isinstance(value, torch.Tensor):
                own[name] = torch.randn(value.shape, generator=gen, dtype=value.dtype)
    state[STREAM]["t"] = t
    return state


def own_inlined(loss: ast.Expr, info) -> ast.Expr:
    """The loss with the level's contexts that use its own states (transitively) substituted."""
    contexts = {c.name: c.value for c in info.contexts.values()}
    owned: dict[str, ast.Expr] = {}
    while True:
        more = {n: v for n, v in contexts.items() if n not in owned and any(
            m.id in set(info.states) | set(owned) for m in names_in(v))}
        if not more:
            break
        owned.update(more)
    return _substitute(loss, owned, len(owned) + 1)


def _substitute(expr, names: dict, depth: int):
    if isinstance(expr, ast.Name) and expr.id in names and depth > 0:
        return _substitute(names[expr.id], names, depth - 1)
    if not isinstance(expr, ast.Node):
        return expr
    updates = {f: (_substitute(v, names, depth) if isinstance(v, ast.Node) else
                   [_substitute(x, names, depth) for x in v] if isinstance(v, list) else v)
               for f, v in expr}
    return expr.model_copy(update=updates)


def compare_writes(spec, unit) -> list[Comparison]:
    """Every gradient or momentum write of the module at the drawn token."""
    module = drawn_module(spec, unit.hparams, unit.seed)
    program, params = module.program, dict(module.named_parameters())
    gen = torch.Generator().manual_seed(unit.seed + 1)
    state = drawn_state(module, unit.batch, unit.step - 1, gen)
    x_t = torch.randn(unit.batch, program.dim, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        _, after = run_reference(program, params, x_t[:, None], copy.deepcopy(state), end=False)
    unit_at = lambda: UnitValues(program, params, copy.deepcopy(state), x_t, unit.step)
    out = []
    for level in program.levels:
        info = spec.graph.levels[level.name]
        objectives = {o.state or next(iter(info.states)): o for o in info.objectives}
        for write in level.writes:
            if write.kind == "explicit" or write.target not in objectives:
                continue
            own = after[level.name]
            compiled = {"state": own[write.target] + own.get(f"{write.target}.pending", 0)}
            if write.kind == "momentum":
                compiled["momentum"] = own[f"{write.target}_momentum"]
            compiled.update({s.buffer: own[s.buffer] for s in write.chain if s.buffer})
            objective = objectives[write.target]
            loss = own_inlined(objective.loss, info)
            with torch.no_grad():
                expected = _expected(level, write, objective.rules, loss, unit_at, state)
            shown = _inputs(level, write.target, loss, objective.rules, unit_at, state, unit)
            out.append(Comparison(level.name, write.target, write.derivation, _formula(write),
                                  compiled, expected, shown, [state[level.name][write.target]]))
    return out


def _expected(level, write, rules: list[ast.Rule], loss: ast.Expr, unit_at, state):
    """The rule's (the chain's) step by checking/rules.py's reading. A chain's buffers are
    named as the Program names them; the rules and their arguments come from the spec."""
    target, rule = write.target, rules[-1]
    unit = unit_at()
    frame = unit.frames[level.name]
    evaluated = lambda r: {k: unit.evaluate(level, "current", v)
                           for k, v in rule_arguments(r).items()}
    args = evaluated(rule)
    current = state[level.name][target]

    def grad_at(value):
        fresh = unit_at()
        return autograd_gradient(lambda leaf: fresh.evaluate(level, "snapshot", loss,
                                                             {target: leaf}), value)

    key = dgd_key(loss, target) if rule.name == "dgd" else None
    norm2 = unit.evaluate(level, "snapshot", ast.Call(func="dot", args=[key, key])) \
        if key is not None else None
    chain = {}
    if len(rules) > 1:
        names = {s.position: s.buffer for s in write.chain}
        transforms = [(r.name, evaluated(r), names.get(i)) for i, r in enumerate(rules[:-1], 1)]
        layout = level.states[target].mlp

        def matrices(u, f):                  # f on each weight matrix, gamma as one row
            if layout is None:
                return f(u)
            pieces, join = _matrices(frame, layout, u)
            return join([f(w) for w in pieces])

        direction, chain = chain_direction(transforms, grad_at(current), state[level.name],
                                           matrices, frame.align)
        grad_at = lambda value: direction
    term = None
    if key is not None and args.get("precondition") is True:
        term = mlp.precondition(level.states[target].mlp, current,
                                unit.evaluate(level, "snapshot", key))
    stepped = step_rule(rule.name, args, current, grad_at, frame.align,
                        momentum=state[level.name].get(f"{target}_momentum"), key_norm2=norm2,
                        precondition=term,
                        matrices=lambda g: _matrices(frame, level.states[target].mlp, g))
    return None if stepped is None else {**stepped, **chain}


def _matrices(frame, layout, grad):
    """A gradient's weight matrices [*units, o, i] (an mlp state's layers, `layernorm`'s gamma
    as one [*units, 1, d_L]; a tensor state as one [*units, 1, n]) and the function that puts
    them back."""
    if layout is not None:
        depth = len(layout.layers)               # the parts after the layers: gamma [*units, d_L]
        pieces = [w if i < depth else w.unsqueeze(-2)
                  for i, w in enumerate(mlp.layers(layout, grad))]
        join = lambda ps: mlp.flatten(layout, [p if i < depth else p.squeeze(-2)
                                               for i, p in enumerate(ps)])
        return pieces, join
    units = grad.shape[:frame.nb]
    return [grad.reshape(units + (1, -1))], lambda pieces: pieces[0].reshape(grad.shape)


def _formula(write) -> str:
    grad = format_expr(write.grad) if write.grad is not None else \
        f"autograd of {format_expr(write.loss)}"
    kept = lambda: write.target if write.decay == ast.Number(value=1) else \
        f"{format_expr(write.decay)} * {write.target}"
    head = f"{write.target} <- {kept()} - ({format_expr(write.lr)}) * G"
    if write.kind == "momentum":
        head = f"m <- {format_expr(write.beta)} * m - ({format_expr(write.lr)}) * G; " \
               f"{write.target} <- {kept()} + m"
    if write.clip is not None:
        grad = f"{grad}, clipped to norm {format_expr(write.clip)} per weight matrix"
    return f"{head},  G = {grad}"


def _inputs(level, target, loss, rules, unit_at, state, unit) -> dict:
    values = unit_at()
    shown = {"hyper-parameters": unit.hparams, "batch": unit.batch, "token t": unit.step,
             "seed": unit.seed, f"{target} (before)": state[level.name][target]}
    used = [loss] + [v for rule in rules for v in rule_arguments(rule).values()]
    for name in dict.fromkeys(n.id for e in used for n in names_in(e)):
        if name != target and name in level.contexts:
            shown[name] = values.context(level, name)
    return shown
