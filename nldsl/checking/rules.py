"""The learning rules as builtins.RULES defines them, applied to an autograd gradient.

This is the check's own reading of the rules, written from their definitions and not from the
compiler's derivation (nldsl/lower/derive.py), so the two can disagree:

    gd(lr, decay)            S <- decay S - lr G                       (eq. 2)
    ema(beta)                S <- beta S - (1 - beta) G
    dgd(lr, decay, normalized)  S <- decay S - lr' G, lr' = lr / (1 + lr ||k||^2) when normalized,
                             k the key of the objective's l2(S(k), v) (or l2(S @ k, v)) term (eq. 57);
                             precondition = true: - lr' (W k) k^T besides, W the weight of S
                             that takes k, as S was before the write (eq. 88)
    momentum(lr, beta, decay)   m <- beta m - lr G;  S <- decay S + m (Titans eqs. 13-14)
    newton_schulz(steps, "cubic")  `steps` times S <- S - G / 4 from the state's initial value (eq. 44)

A chain `r1 then ... then rn` (docs/language.md, "Chains") transforms G first: momentum(lr, beta)
m <- beta m + lr u, ema(beta) m <- beta m + (1 - beta) u (u <- m after each), newton_schulz(k)
u <- NS_k(u) of each weight matrix (`orthogonalised`: X <- X / max(||X||_F, eps), then k times
X <- a X + (b A + c A^2) X with A = X X^T); the last rule applies u as it would apply G.

G = grad_S L(S) is taken by torch.autograd from the objective evaluated on a leaf tensor. Other
rules (the quintic Newton-Schulz polynomial, `solve`) are not gradient steps: `step_rule`
returns None for them and the check says so.
"""
from __future__ import annotations

from typing import Callable

import torch

from nldsl.language import ast
from nldsl.language.consteval import calls_in

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
              key_norm2=None, restart=None, precondition=None, matrices=None) -> dict | None:
    """{"state": new value[, "momentum": new buffer]} by the rule's definition. `args` are the
    rule's evaluated arguments, `grad_at(S)` the autograd gradient, `align(a, b)` broadcasts a
    gate against a state (the module frame's rule), `key_norm2` ||k||^2 for dgd, `restart` the
    initial value Newton-Schulz restarts from, `precondition` dgd(precondition = true)'s
    (W k) k^T on the state's key-side weight, `matrices` a gradient's weight matrices for
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
    new = mul(decay, state) - mul(lr, grad)
    if rule == "dgd" and precondition is not None:      # eq. 88: the key-side weight's W k k^T
        new = new - mul(lr, precondition)
    return {"state": new}


#: The polynomials of newton_schulz (builtins.RULES): Muon's quintic, and eq. 44's cubic.
POLYNOMIALS = {"quintic": (3.4445, -4.7750, 2.0315), "cubic": (1.5, -0.5, 0.0)}


def orthogonalised(matrix: torch.Tensor, steps, polynomial="quintic", eps=1e-7) -> torch.Tensor:
    """NS_k of each matrix of [..., m, n] by the definition above (no transposition: a tall
    matrix gives the same value as Muon's transposed iteration)."""
    a, b, c = POLYNOMIALS[polynomial] if isinstance(polynomial, str) else polynomial
    x = matrix / torch.linalg.matrix_norm(matrix, keepdim=True).clamp(min=eps)
    for _ in range(int(steps)):
        gram = x @ x.transpose(-1, -2)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x


def chain_direction(transforms, grad, buffers: dict, matrices, align) -> tuple[torch.Tensor, dict]:
    """u after each (rule name, evaluated args, buffer name) of a chain but its last rule, from
    G; `matrices(u, f)` applies f to each weight matrix of a state-shaped u. Returns (u, the
    buffers' new values)."""
    mul = lambda a, b: _times(align, a, b)
    u, written = grad, {}
    for rule, args, buffer in transforms:
        if rule == "newton_schulz":
            u = matrices(u, lambda w: orthogonalised(w, args["steps"], args["polynomial"],
                                                      args["eps"]))
            continue
        gain = args["lr"] if rule == "momentum" else 1 - args["beta"]
        u = written[buffer] = mul(args["beta"], buffers[buffer]) + mul(gain, u)
    return u, written


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
