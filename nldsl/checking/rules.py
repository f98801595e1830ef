"""The learning rules as builtins.RULES defines them, applied to an autograd gradient.

This is the check's own reading of the rules, written from their definitions and not from the
compiler's derivation (nldsl/optim/derive.py), so the two can disagree:

    gd(lr, decay)            S <- decay S - lr G                       (eq. 2)
    ema(beta)                S <- beta S - (1 - beta) G
    dgd(lr, decay, normalized)  S <- decay S - lr' G, lr' = lr / (1 + lr ||k||^2) when normalized,
                             k the key of the objective's l2(S(k), v) (or l2(S @ k, v)) term (eq. 57)
    momentum(lr, beta, decay)   m <- beta m - lr G;  S <- decay S + m (Titans eqs. 13-14)
    newton_schulz(steps, "cubic")  `steps` times S <- S - G / 4 from the state's initial value (eq. 44)

G = grad_S L(S) is taken by torch.autograd from the objective evaluated on a leaf tensor. Other
rules (the quintic Newton-Schulz polynomial, `solve`) are not gradient steps: `step_rule`
returns None for them and the check says so.
"""
from __future__ import annotations

from typing import Callable

import torch

from nldsl import ast
from nldsl.consteval import calls_in

GRADIENT_RULES = ("gd", "ema", "dgd", "momentum")


def autograd_gradient(loss_of: Callable[[torch.Tensor], object], value: torch.Tensor) -> torch.Tensor:
    """grad_S of the summed loss at `value` (each unit's loss is its own: the sum over a batch
    of units gives every unit its own gradient); zero where the loss does not depend on S."""
    with torch.enable_grad():
        leaf = value.detach().clone().requires_grad_(True)
        loss = loss_of(leaf)
        if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
            return torch.zeros_like(leaf)
        (grad,) = torch.autograd.grad(loss.sum(), leaf, allow_unused=True)
    return torch.zeros_like(leaf) if grad is None else grad


def dgd_key(loss: ast.Expr, state: str) -> ast.Expr | None:
    """k of the first l2(S(k), v) or l2(S @ k, v) term in the loss, either argument order."""
    for call in calls_in(loss):
        if call.func != "l2" or len(call.args) != 2:
            continue
        for side in call.args:
            if isinstance(side, ast.Call) and side.func == state and len(side.args) == 1:
                return side.args[0]
            if isinstance(side, ast.Binary) and side.op == "@" and side.left == ast.Name(id=state):
                return side.right
    return None


def step_rule(rule: str, args: dict, state: torch.Tensor, grad_at, align, momentum=None,
              key_norm2=None, restart=None, matrices=None) -> dict | None:
    """{"state": new value[, "momentum": new buffer]} by the rule's definition. `args` are the
    rule's evaluated arguments, `grad_at(S)` the autograd gradient, `align(a, b)` broadcasts a
    gate against a state (the module frame's rule), `key_norm2` ||k||^2 for dgd, `restart` the
    initial value Newton-Schulz restarts from, `matrices` a gradient's weight matrices for
    `clip` (see _clip)."""
    mul = lambda a, b: _times(align, a, b)
    if rule == "newton_schulz":
        if args.get("polynomial") != "cubic":
            return None
        value = restart
        for _ in range(int(args["steps"])):
            value = value - 0.25 * grad_at(value)
        return {"state": value}
    if rule not in GRADIENT_RULES:
        return None
    grad = grad_at(state)
    if args.get("clip") is not None:
        grad = _clip(grad, args["clip"], matrices)
    if rule == "ema":
        return {"state": mul(args["beta"], state) - mul(1 - args["beta"], grad)}
    lr, decay = args["lr"], args.get("decay", 1)
    if rule == "dgd" and key_norm2 is not None and _true(args.get("normalized", True)):
        lr = lr / (1 + lr * key_norm2)
    if rule == "momentum":
        buffer = mul(args["beta"], momentum) - mul(lr, grad)
        return {"state": mul(decay, state) + buffer, "momentum": buffer}
    return {"state": mul(decay, state) - mul(lr, grad)}


def _clip(grad: torch.Tensor, c, matrices) -> torch.Tensor:
    """`clip = c`: each weight matrix's gradient times min(1, c / ||G||_F); `matrices(G)` gives
    (the matrices [*units, o, i], the function putting them back)."""
    pieces, join = matrices(grad)
    clipped = []
    for g in pieces:
        norm = g.pow(2).sum((-2, -1)).sqrt()                               # [*units]
        factor = torch.clamp(torch.as_tensor(c, dtype=g.dtype) / norm, max=1)
        clipped.append(g * factor.reshape(factor.shape + (1, 1)))
    return join(clipped)


def _true(flag) -> bool:
    return bool(flag) if not isinstance(flag, torch.Tensor) else bool(flag.all())


def _times(align, a, b):
    a, b = align(a, b)
    return a * b
