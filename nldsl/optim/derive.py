"""Derived update rules: objective + learning rule -> the state's update (eqs 2, 13, 44, 57).

Every rule here is gradient-based, S <- decay S - lr grad L(S); the rules differ in lr and decay:

    rule                       lr                           decay
    gd(lr, decay)              lr                           decay
    ema(beta)                  1 - beta                     beta
    dgd(lr, decay, normalized) lr / (1 + lr ||k||^2)  (57)  decay     k: the key of l2(S @ k, v)
    newton_schulz(cubic)       1/4, `steps` times from the initial value (eq. 44)

`solve` is not a gradient step: for w window(c, l2(S * k, v), gamma) + lam l2(S, 0) (eq. 101) it
is the minimiser S* = w sum gamma k v / (w sum gamma k^2 + lam) (eq. 102), with hidden running
sums; `solve.py` derives and lowers it (plan.py calls it instead of `derive`).

grad L(S) comes from the table `closed_grad` when the objective is built from `dot`, `l2` and
`orthogonality` of S, S @ k or S(k) (matrix memories), sums, and factors free of S:

    dot(S, v) -> v      dot(S @ k, v) -> v k^T      l2(S, v) -> S - v
    l2(S @ k, v) -> (S k - v) k^T (the delta rule)  orthogonality(S) -> 2 S (S^T S - I)  (eq. 43)

Anything else (an MLP memory, another loss) becomes an `AutogradStep` taken with torch.func.
An EMA of a context x (grad = -x) is written lerp(S, x, 1 - beta), of a product x * y
addcmul(S * beta, x, y, 1 - beta): the ops PyTorch's optimizers use, so twins agree to the bit.
"""
from __future__ import annotations

from nldsl import ast
from nldsl.builtins import RULES
from nldsl.consteval import children
from nldsl.errors import NLDSLError
from nldsl.optim.ir import AutogradStep, Write


class NoClosedForm(Exception):
    """The objective is outside the derivation table: use autograd."""


def num(value) -> ast.Number:
    return ast.Number(value=value)


def binary(op, left, right) -> ast.Expr:
    """Build left op right, folding the identities that derivations produce (0 +, 1 *, - 0)."""
    zero = lambda e: isinstance(e, ast.Number) and e.value == 0
    one = lambda e: isinstance(e, ast.Number) and e.value == 1
    if op == "+" and zero(left):
        return right
    if op in "+-" and zero(right):
        return left
    if op == "-" and zero(left):
        return ast.Unary(op="-", operand=right)
    if op == "*" and (zero(left) or zero(right)):
        return num(0)
    if op == "*" and one(left):
        return right
    if op in "*/" and one(right):
        return left
    return ast.Binary(op=op, left=left, right=right)


def call(func, *args) -> ast.Call:
    return ast.Call(func=func, args=list(args))


SHAPE_FUNCS = ("size", "ndim")


def mentions(expr: ast.Expr, name: str) -> bool:
    """Does expr depend on the value of `name`? (`ndim(S)`, `size(S, 0)` depend on its shape only.)"""
    if isinstance(expr, ast.Call) and expr.func in SHAPE_FUNCS:
        return False
    if isinstance(expr, ast.Name):
        return expr.id == name
    if isinstance(expr, ast.Call) and expr.func == name:
        return True
    return any(mentions(child, name) for child in children(expr))


def _memory_key(expr: ast.Expr, state: str) -> ast.Expr | None:
    """k when expr is `S @ k` or `S(k)` for the state S, else None."""
    if isinstance(expr, ast.Binary) and expr.op == "@" and expr.left == ast.Name(id=state):
        return expr.right
    if isinstance(expr, ast.Call) and expr.func == state and len(expr.args) == 1:
        return expr.args[0]
    return None


def closed_grad(loss: ast.Expr, state: str, deep: bool = False) -> ast.Expr:
    """grad_S loss in closed form (an expression), or raise NoClosedForm (always for a deep,
    MLP, memory S: its gradient is autograd's job)."""
    if deep and mentions(loss, state):
        raise NoClosedForm(state)
    if not mentions(loss, state):
        return num(0)
    if isinstance(loss, ast.Unary) and loss.op == "-":
        return _negate(closed_grad(loss.operand, state))
    if isinstance(loss, ast.Binary) and loss.op in "+-":
        return binary(loss.op, closed_grad(loss.left, state), closed_grad(loss.right, state))
    if isinstance(loss, ast.Binary) and loss.op == "*":
        if not mentions(loss.left, state):
            return binary("*", loss.left, closed_grad(loss.right, state))
        if not mentions(loss.right, state):
            return binary("*", loss.right, closed_grad(loss.left, state))
    if isinstance(loss, ast.Binary) and loss.op == "/" and not mentions(loss.right, state):
        return binary("/", closed_grad(loss.left, state), loss.right)
    if isinstance(loss, ast.Conditional) and not mentions(loss.cond, state):
        return ast.Conditional(cond=loss.cond, then=closed_grad(loss.then, state),
                               otherwise=closed_grad(loss.otherwise, state))
    if isinstance(loss, ast.Call) and loss.func in ("dot", "l2") and len(loss.args) == 2:
        return _pair_grad(loss.func, *loss.args, state)
    if isinstance(loss, ast.Call) and loss.func == "orthogonality" and loss.args == [ast.Name(id=state)]:
        s = ast.Name(id=state)
        gram = binary("@", binary("@", s, call("transpose", s)), s)
        return binary("*", num(2), binary("-", gram, s))
    raise NoClosedForm(loss)


def _pair_grad(func: str, a: ast.Expr, b: ast.Expr, state: str) -> ast.Expr:
    if mentions(b, state):
        if mentions(a, state):
            raise NoClosedForm(func)
        a, b = b, a                       # both objectives are symmetric
    s = ast.Name(id=state)
    if a == s:
        return b if func == "dot" else binary("-", s, b)
    key = _memory_key(a, state)
    if key is None or mentions(key, state):
        raise NoClosedForm(func)
    value = b if func == "dot" else binary("-", binary("@", s, key), b)
    return call("outer", value, key)


def _negate(expr: ast.Expr) -> ast.Expr:
    if isinstance(expr, ast.Unary) and expr.op == "-":
        return expr.operand
    if isinstance(expr, ast.Number):
        return num(-expr.value)
    return ast.Unary(op="-", operand=expr)


def key_norm_squared(loss: ast.Expr, state: str) -> ast.Expr | None:
    """||k||^2 for the l2(S @ k, v) term of a DGD objective (conditional where the term is)."""
    if isinstance(loss, ast.Call) and loss.func == "l2" and len(loss.args) == 2:
        for side in loss.args:
            key = _memory_key(side, state)
            if key is not None:
                return call("dot", key, key)
        return None
    if isinstance(loss, ast.Conditional):
        then, otherwise = (key_norm_squared(e, state) for e in (loss.then, loss.otherwise))
        if then is None and otherwise is None:
            return None
        return ast.Conditional(cond=loss.cond, then=then or num(0), otherwise=otherwise or num(0))
    if isinstance(loss, ast.Binary) and loss.op in "+-*":
        found = [key_norm_squared(e, state) for e in (loss.left, loss.right)]
        found = [f for f in found if f is not None]
        return found[0] if found else None
    return None


def rule_arguments(rule: ast.Rule) -> dict[str, ast.Expr]:
    """The rule's arguments by name, defaults filled in (builtins.RULES)."""
    spec = RULES[rule.name]
    args = dict(zip(spec.params, rule.args))
    args.update({k.name: k.value for k in rule.kwargs})
    for name, default in spec.defaults.items():
        if name not in args:
            value = default if not isinstance(default, bool) else default
            args[name] = (ast.Bool(value=value) if isinstance(value, bool) else
                          ast.String(value=value) if isinstance(value, str) else num(value))
    return args


def gd_value(state: str, grad: ast.Expr, lr: ast.Expr, decay: ast.Expr, ema: bool = False) -> ast.Expr:
    """decay S - lr G; an EMA of x (G = -x, decay = 1 - lr) as lerp(S, x, lr)."""
    s = ast.Name(id=state)
    negative = isinstance(grad, ast.Unary) and grad.op == "-"
    product = negative and isinstance(grad.operand, ast.Binary) and grad.operand.op == "*"
    if product and ema:
        return call("addcmul", binary("*", s, decay), grad.operand.left, grad.operand.right, lr)
    if negative and ema:
        return call("lerp", s, grad.operand, lr)
    kept = s if decay == num(1) else binary("*", decay, s)
    if negative:
        return binary("+", kept, binary("*", lr, grad.operand))
    return binary("-", kept, binary("*", lr, grad))


def derive(objective: ast.Objective, state: str, init: ast.Expr | None, deep: bool = False) -> Write:
    """The update of `state` that one unit of `objective` makes."""
    if len(objective.rules) != 1:
        raise NLDSLError(f"rule chains (`then`) are not compiled for optimizers yet: {state}")
    rule = objective.rules[0]
    args = rule_arguments(rule)
    if rule.name == "newton_schulz":
        return _newton_schulz(objective.loss, state, args, init)
    if rule.name == "ema":
        lr, decay = binary("-", num(1), args["beta"]), args["beta"]
    elif rule.name in ("gd", "dgd"):
        lr, decay = args["lr"], args["decay"]
    elif rule.name == "solve":
        raise NLDSLError("`solve` writes hidden sums too: lower it with nldsl.optim.solve.lower_solve")
    else:
        raise NLDSLError(f"learning rule {rule.name!r} is not compiled for optimizers yet")
    if rule.name == "dgd":
        norm2 = key_norm_squared(objective.loss, state)
        if norm2 is not None:
            normalized = binary("/", lr, binary("+", num(1), binary("*", lr, norm2)))
            flag = args["normalized"]
            lr = (normalized if flag.value else lr) if isinstance(flag, ast.Bool) else \
                ast.Conditional(cond=flag, then=normalized, otherwise=lr)
    try:
        grad = closed_grad(objective.loss, state, deep)
    except NoClosedForm:
        return Write(state, autograd=AutogradStep(objective.loss, lr, decay), derivation="autograd")
    return Write(state, value=gd_value(state, grad, lr, decay, rule.name == "ema"), derivation=f"{rule.name} closed form")


def _newton_schulz(loss, state, args, init) -> Write:
    if init is None:
        raise NLDSLError(f"newton_schulz needs a start: give `state {state} like W = <value>`")
    polynomial = args["polynomial"]
    if isinstance(polynomial, ast.String) and polynomial.value == "cubic":
        grad = closed_grad(loss, state)
        step = binary("-", ast.Name(id=state), binary("*", num(0.25), grad))
        return Write(state, value=step, repeat=args["steps"], restart=init,
                     derivation="newton_schulz cubic: GD steps, zeta = 1/4 (eq. 44)")
    value = ast.Call(func="newton_schulz", args=[init, args["steps"], polynomial, args["eps"],
                                                 args["precision"]])
    return Write(state, value=value, derivation="newton_schulz quintic polynomial")
