"""Recognise plans that a torch fused kernel computes: structural unification of a plan with the
plan of a template spec, never a test of the spec's name.

The templates are written in nldsl and lowered by the same pipeline; their hyper-parameters
named `P_*` are pattern variables that bind to any numeric expression of the candidate plan.
"""
from __future__ import annotations

from functools import lru_cache

from nldsl.language import ast
from nldsl.optim.ir import Plan

_ADAM = """optimizer adam_template(P_lr, P_b1, P_b2, P_eps, P_wd, P_keep) {{
  level weights every 1 step {{
    W <- {keep} - P_lr * (m / (1 - P_b1 ** step)) / (sqrt(v / (1 - P_b2 ** step)) + P_eps)
  }}
  level moments every 1 step {{
    key g = {grad}
    state m like W = 0
    state v like W = 0
    m: minimize -dot(m, g) by ema(P_b1)
    v: minimize -dot(v, g * g) by ema(P_b2)
  }}
}}"""
VARIANTS = {  # (weights kept as, gradient) -> the torch kernel that computes that plan
    ("W", "grad(W) + P_wd * W"): "_fused_adam_",
    ("W", "grad(W)"): "_fused_adam_",
    ("W * (1 - P_lr * P_wd)", "grad(W)"): "_fused_adamw_",
}


@lru_cache(maxsize=None)
def _templates():
    from nldsl.optim.plan import lower
    from nldsl.spec import load
    return [(lower(load(_ADAM.format(keep=keep, grad=grad))), kernel)
            for (keep, grad), kernel in VARIANTS.items()]


def unify(pattern, value, bound: dict) -> bool:
    """Does `value` match `pattern`, binding each `P_*` name consistently?"""
    if isinstance(pattern, ast.Name) and pattern.id.startswith("P_"):
        if pattern.id in bound:
            return bound[pattern.id] == value
        bound[pattern.id] = value
        return True
    if isinstance(pattern, ast.Node):
        if type(pattern) is not type(value):
            return False
        for (field, p), (_, v) in zip(pattern, value):
            if field != "span" and not unify(p, v, bound):
                return False
        return True
    if isinstance(pattern, list):
        return isinstance(value, list) and len(pattern) == len(value) and all(
            unify(p, v, bound) for p, v in zip(pattern, value))
    return pattern == value


def _writes(plan: Plan) -> dict:
    """Each written state by role: its level position and write order, for unification."""
    return {(i, j): w for i, lv in enumerate(plan.levels) for j, w in enumerate(lv.writes)}


def _matches(plan: Plan, template: Plan, bound: dict) -> bool:
    """Unify `plan` with `template` after renaming the plan's moments and context to the
    template's names, so `m2` and `grad_t` match `m` and `g`."""
    mine, theirs = _writes(plan), _writes(template)
    ctx_m, ctx_t = plan.levels[0].contexts, template.levels[0].contexts
    if mine.keys() != theirs.keys() or len(ctx_m) != 1 or len(ctx_t) != 1:
        return False
    renaming = {w.target: t.target for w, t in zip(plan.levels[0].writes, template.levels[0].writes)}
    renaming[next(iter(ctx_m))] = next(iter(ctx_t))
    return all(unify(theirs[k].value, _rename(mine[k].value, renaming), bound) for k in theirs) \
        and unify(next(iter(ctx_t.values())), next(iter(ctx_m.values())), bound)


def match_adam(plan: Plan) -> str | None:
    """Source calling torch's fused Adam/AdamW kernel when `plan` is Adam's, else None."""
    if len(plan.states) != 3 or len(plan.levels) != 2:
        return None
    for template, kernel in _templates():
        bound: dict = {}
        if _matches(plan, template, bound) and all(_is_scalar(v, plan) for v in bound.values()):
            moments = [w.target for w in plan.levels[0].writes]
            return _fused_source(plan, kernel, bound, moments)
    return None


def _rename(expr, mapping: dict):
    if isinstance(expr, ast.Name) and expr.id in mapping:
        return ast.Name(id=mapping[expr.id])
    if isinstance(expr, ast.Node):
        return expr.model_copy(update={f: _rename(v, mapping) if isinstance(v, ast.Node) else
                                       [_rename(x, mapping) for x in v] if isinstance(v, list) else v
                                       for f, v in expr})
    return expr


def _is_scalar(expr, plan: Plan) -> bool:
    from nldsl.language.consteval import names_in
    return all(n.id in plan.hparams or n.id == "step" for n in names_in(expr))


def _fused_source(plan, kernel, bound, moments) -> str:
    from nldsl.optim.printer import Printer, literal, user
    p = Printer(set(), foreach=False)
    arg = {k: p.expr(v)[0] for k, v in bound.items()}
    m, v = moments
    wd = arg.get("P_wd", "0")
    lines = [f"# nldsl optimizer {literal(plan.name)}, schedule fused (fused kernel): its plan is Adam's",
             "# (eqs 101-105), which torch computes in one fused kernel: torch.{}".format(kernel),
             "def step_group(params, grads, states, hp, step):", "    u_step = step"]
    lines += [f"    {user(h)} = hp[{literal(h)}]" for h in plan.hparams] + ["    " + t for t in p.pending]
    lines += [f"    {user(m)} = [st[{literal(m)}] for st in states]",
              f"    {user(v)} = [st[{literal(v)}] for st in states]",
              "    steps = [torch.tensor(float(step))] * len(params)",
              f"    torch.{kernel}(params, grads, {user(m)}, {user(v)}, [], steps, amsgrad=False,",
              f"        lr={arg['P_lr']}, beta1={arg['P_b1']}, beta2={arg['P_b2']},",
              f"        weight_decay={wd}, eps={arg['P_eps']}, maximize=False,",
              "        grad_scale=None, found_inf=None)"]
    return "\n".join(lines) + "\n"
