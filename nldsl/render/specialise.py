"""Compact labels show a spec at its defaults: `a if flag else b` with a constant `flag`.

Specs that mirror `torch.optim` carry options (`amsgrad`, `maximize`, `nesterov`) as
conditionals on hyper-parameters. A compact diagram replaces each conditional whose condition
is constant under the hyper-parameters' defaults by the branch it takes, and records which
hyper-parameters it fixed, so the picture can say so; `--detail full` shows every branch.
"""
from __future__ import annotations

from nldsl.language import ast
from nldsl.language.consteval import names_in, try_evaluate


def specialise(node, env: dict, fixed: set[str]):
    """`node` with constant conditionals folded; the names they depended on go into `fixed`."""
    if isinstance(node, ast.Conditional):
        value = try_evaluate(node.cond, env)
        if isinstance(value, bool):
            fixed.update(n.id for n in names_in(node.cond))
            return specialise(node.then if value else node.otherwise, env, fixed)
    if isinstance(node, ast.Node):
        changes = {}
        for field in type(node).model_fields:
            if field == "span":
                continue
            old = getattr(node, field)
            new = specialise(old, env, fixed)
            if new is not old:
                changes[field] = new
        return node.model_copy(update=changes) if changes else node
    if isinstance(node, list):
        items = [specialise(item, env, fixed) for item in node]
        return items if any(a is not b for a, b in zip(items, node)) else node
    return node
