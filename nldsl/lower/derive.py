"""Derived update rules: objective + learning rule -> the state's update (eqs 2, 13, 44, 57).

Every rule here is gradient-based, S <- decay S - lr grad L(S); the rules differ in lr and decay:

    rule                       lr                           decay
    gd(lr, decay)              lr                           decay
    ema(beta)                  1 - beta                     beta
    dgd(lr, decay, normalized) lr / (1 + lr ||k||^2)  (57)  decay     k: the key of l2(S @ k, v)
    newton_schulz(cubic)       1/4, `steps` times from the initial value (eq. 44)
    momentum(lr, beta, decay)  m <- beta m - lr grad L(S); S <- decay S + m (Titans eqs. 13-14)

`r1 then ... then rn` (docs/language.md, "Chains") transforms the gradient by every rule but the
last (momentum and ema through a hidden buffer, newton_schulz by orthogonalising it) and applies
the result by the last rule in place of the gradient (`derive_writes`).

`solve` is not a gradient step: for w window(c, l2(S * k, v), gamma) + lam l2(S, 0) (eq. 101) it
is the minimiser S* = w sum gamma k v / (w sum gamma k^2 + lam) (eq. 102), with hidden running
sums; `nldsl/optim/solve.py` derives and lowers it (`optim/plan.py` calls it instead of `derive`).

grad L(S) comes from the table `closed_grad` when the objective is built from `dot`, `l2` and
`orthogonality` of S, S @ k or S(k) (matrix memories), sums, and factors free of S:

    dot(S, v) -> v      dot(S @ k, v) -> v k^T      l2(S, v) -> S - v
    l2(S @ k, v) -> (S k - v) k^T (the delta rule)  orthogonality(S) -> 2 S (S^T S - I)  (eq. 43)

Anything else (an MLP memory, another loss) becomes an `AutogradStep` taken with torch.func.
An EMA of a context x (grad = -x) is written lerp(S, x, 1 - beta), of a product x * y
addcmul(S * beta, x, y, 1 - beta): the ops PyTorch's optimizers use, so twins agree to the bit.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from nldsl.language import ast
from nldsl.language.builtins import RULES, TRANSFORM_RULES
from nldsl.language.consteval import children
from nldsl.errors import NLDSLCompileError, Problem
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


def negate(expr: ast.Expr) -> ast.Expr:
    """-expr, folding a double negation and a negated number."""
    if isinstance(expr, ast.Unary) and expr.op == "-":
        return expr.operand
    if isinstance(expr, ast.Number):
        return num(-expr.value)
    return ast.Unary(op="-", operand=expr)


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
        return negate(closed_grad(loss.operand, state))
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


def loss_key(loss: ast.Expr, state: str) -> ast.Expr | None:
    """k of the loss's first l2(S(k), v) or l2(S @ k, v) term, either order (what dgd's
    `precondition` multiplies by: eq. 88's k k^T), or None."""
    for node in [loss] + [c for c in _calls(loss)]:
        if isinstance(node, ast.Call) and node.func == "l2" and len(node.args) == 2:
            for side in node.args:
                key = _memory_key(side, state)
                if key is not None:
                    return key
    return None


def _calls(expr: ast.Expr):
    for child in children(expr):
        if isinstance(child, ast.Call):
            yield child
        yield from _calls(child)


def rule_arguments(rule: ast.Rule) -> dict[str, ast.Expr]:
    """The rule's arguments by name, defaults filled in (builtins.RULES; a None default, such
    as `clip`'s, stays absent)."""
    spec = RULES[rule.name]
    args = dict(zip(spec.params, rule.args))
    args.update({k.name: k.value for k in rule.kwargs})
    for name, default in spec.defaults.items():
        if name not in args and default is not None:
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


def located(node: ast.Node, message: str, expected: str, hint: str, source=None) -> NLDSLCompileError:
    """A compile error pointing at `node` (rules and objectives carry their spans)."""
    span = node.span
    return NLDSLCompileError([Problem(message, span.line, span.col, span.end_line or None,
                                      span.end_col or None, expected, hint, source)])


def rate(rule: ast.Rule, args: dict, loss: ast.Expr, state: str) -> tuple[ast.Expr, ast.Expr]:
    """(lr, decay) of a rule that applies an update direction: gd, dgd, ema (table above)."""
    if rule.name == "ema":
        return binary("-", num(1), args["beta"]), args["beta"]
    lr, decay = args["lr"], args["decay"]
    if rule.name == "dgd":
        norm2 = key_norm_squared(loss, state)
        if norm2 is not None:
            normalized = binary("/", lr, binary("+", num(1), binary("*", lr, norm2)))
            flag = args["normalized"]
            lr = (normalized if flag.value else lr) if isinstance(flag, ast.Bool) else \
                ast.Conditional(cond=flag, then=normalized, otherwise=lr)
    return lr, decay


def derive(objective: ast.Objective, state: str, init: ast.Expr | None, deep: bool = False,
           source=None) -> Write:
    """The update of `state` that one unit of `objective` makes, for one rule of gd, dgd, ema or
    newton_schulz (`derive_writes` lowers momentum and `then` chains)."""
    rule = objective.rules[0]
    args = rule_arguments(rule)
    if rule.name == "dgd" and args["precondition"] != ast.Bool(value=False):
        raise located(rule, "dgd(precondition = true) is a rule of module memories (NL eq. 88)",
                      "dgd without `precondition` in an optimizer", "the preconditioner needs "
                      "a key k of l2(S(k), v) and the previous token's state", source)
    if rule.name == "newton_schulz":
        return _newton_schulz(objective.loss, state, args, init, rule, source)
    lr, decay = rate(rule, args, objective.loss, state)
    try:
        grad = closed_grad(objective.loss, state, deep)
    except NoClosedForm:
        return Write(state, autograd=AutogradStep(objective.loss, lr, decay), derivation="autograd")
    return Write(state, value=gd_value(state, grad, lr, decay, rule.name == "ema"), derivation=f"{rule.name} closed form")


@dataclass(frozen=True)
class Derived:
    """What one objective lowers to: its writes in order (a chain's buffers and the gradient it
    transforms first, the state last), the hidden states they keep between units (`buffers`,
    zero at the start, shaped like the state) and the per-unit values (`temporaries`)."""

    writes: list[Write]
    buffers: list[str] = field(default_factory=list)
    temporaries: list[str] = field(default_factory=list)


APPLYING = ("gd", "dgd", "ema", "momentum")


@dataclass(frozen=True)
class ChainStep:
    """A rule before the last of a chain `r1 then ... then rn`: it transforms the update
    direction u (docs/language.md, "Chains"), through the hidden state `buffer` (momentum, ema;
    None for newton_schulz). `args` are the rule's arguments, defaults filled in."""

    rule: str
    args: dict
    position: int                  # 1-based place in the chain
    buffer: str | None = None


def chain_steps(objective: ast.Objective, buffer_name, source=None) -> tuple[list[ChainStep], ast.Rule]:
    """The transforms of `objective`'s rule chain and the rule that applies the result, checked:
    only momentum, ema and newton_schulz transform, only gd, dgd, ema and momentum apply, and a
    transforming momentum has no decay. `buffer_name(rule, position)` names a buffer. Both
    compilers lower chains from this (`derive_writes`, lower/module.py)."""
    rules = objective.rules
    last = rules[-1]
    for rule in rules[:-1]:
        if rule.name not in TRANSFORM_RULES:
            raise located(rule, f"`{rule.name}` cannot transform the update inside a rule chain",
                          "momentum, ema or newton_schulz before `then`",
                          f"put `{rule.name}` last: it applies the update to the state", source)
    if len(rules) > 1 and last.name not in APPLYING:
        raise located(last, f"`{last.name}` cannot end a rule chain", "gd, dgd, ema or momentum "
                      "after the last `then`", "end the chain with `then gd(lr)`", source)
    steps = []
    for position, rule in enumerate(rules[:-1], 1):
        args = rule_arguments(rule)
        if rule.name == "momentum" and args["decay"] != num(1):
            raise located(rule, "a momentum inside a chain has no decay: it transforms the "
                          "update, the last rule applies it", "momentum(lr, beta) before `then`",
                          "give the decay to the last rule (`then gd(lr = 1, decay = d)`)", source)
        buffer = None if rule.name == "newton_schulz" else buffer_name(rule.name, position)
        steps.append(ChainStep(rule.name, args, position, buffer))
    return steps, last


def derive_writes(objective: ast.Objective, state: str, init: ast.Expr | None, deep: bool = False,
                  source=None) -> Derived:
    """Lower `state: minimize L by r1 then ... then rn` (docs/language.md, "Chains"): u starts as
    grad L(state); each rule but the last transforms it, `momentum(lr, beta)`: m <- beta m + lr u,
    `ema(beta)`: m <- beta m + (1 - beta) u (then u <- m), `newton_schulz`: u <- NS(u); the last
    applies u in place of the gradient: gd, dgd and ema as in the table, `momentum(lr, beta, decay)`
    as m <- beta m - lr u; S <- decay S + m (Titans eqs. 13-14). Buffers are hidden states named
    `_momentum_S` (the last rule's) and `_chain_S_i` (rule i's); the autograd gradient of an
    objective outside the table is the per-unit value `_grad_S`."""
    rules = objective.rules
    if len(rules) == 1 and rules[0].name != "momentum":
        return Derived([derive(objective, state, init, deep, source)])
    steps, last = chain_steps(objective, lambda rule, i: f"_chain_{state}_{i}", source)
    if deep:
        raise located(rules[1] if len(rules) > 1 else last, f"{state}: momentum and rule chains "
                      "are not compiled for mlp memories yet", "gd or dgd alone on an mlp state",
                      "use a tensor state (`like W`), or gd", source)
    writes, buffers, temporaries = [], [], []
    try:
        direction = closed_grad(objective.loss, state)
    except NoClosedForm:
        temporaries.append(f"_grad_{state}")
        writes.append(Write(temporaries[0], autograd=AutogradStep(objective.loss, None, None, state),
                            derivation="autograd gradient"))
        direction = ast.Name(id=temporaries[0])
    for step in steps:
        direction = _transform(step, direction, writes, buffers)
    args = rule_arguments(last)
    if last.name != "momentum":
        lr, decay = rate(last, args, objective.loss, state)
        writes.append(Write(state, value=gd_value(state, direction, lr, decay),
                            derivation=f"{' then '.join(r.name for r in rules)}"))
        return Derived(writes, buffers, temporaries)
    buffer = ast.Name(id=f"_momentum_{state}")
    buffers.append(buffer.id)
    writes.append(Write(buffer.id, value=binary("-", binary("*", args["beta"], buffer),
                                                 binary("*", args["lr"], direction)),
                        derivation="momentum buffer (Titans eq. 13)"))
    kept = ast.Name(id=state) if args["decay"] == num(1) else binary("*", args["decay"], ast.Name(id=state))
    writes.append(Write(state, value=binary("+", kept, buffer),
                        derivation=f"{' then '.join(r.name for r in rules)} (Titans eq. 14)"))
    return Derived(writes, buffers, temporaries)


def _transform(step: ChainStep, u: ast.Expr, writes: list, buffers: list) -> ast.Expr:
    """The update direction after `step` (not the last rule of its chain) transforms `u`."""
    args = step.args
    if step.rule == "newton_schulz":
        return ast.Call(func="newton_schulz", args=[u, args["steps"], args["polynomial"],
                                                    args["eps"], args["precision"]])
    m = ast.Name(id=step.buffer)
    buffers.append(step.buffer)
    if step.rule == "ema":
        value = call("lerp", m, u, binary("-", num(1), args["beta"]))
    else:
        value = binary("+", binary("*", args["beta"], m), binary("*", args["lr"], u))
    writes.append(Write(step.buffer, value=value, derivation=f"{step.rule} transform (`then`)"))
    return m


def _newton_schulz(loss, state, args, init, rule, source) -> Write:
    if init is None:
        raise located(rule, f"newton_schulz restarts {state} from its initial value each step, "
                      f"and {state} has none", f"state {state} like W = <value>",
                      "give the state a start, e.g. the update it orthogonalises", source)
    polynomial = args["polynomial"]
    if isinstance(polynomial, ast.String) and polynomial.value == "cubic":
        try:
            grad = closed_grad(loss, state)
        except NoClosedForm:
            raise located(rule, "cubic newton_schulz takes gradient steps on a closed-form "
                          "gradient, and this objective has none", "an objective of the "
                          "derivation table, such as l2(S, u) + orthogonality(S)",
                          "use the quintic polynomial, or gd (an autograd step)", source) from None
        step = binary("-", ast.Name(id=state), binary("*", num(0.25), grad))
        return Write(state, value=step, repeat=args["steps"], restart=init,
                     derivation="newton_schulz cubic: GD steps, zeta = 1/4 (eq. 44)")
    value = ast.Call(func="newton_schulz", args=[init, args["steps"], polynomial, args["eps"],
                                                 args["precision"]])
    return Write(state, value=value, derivation="newton_schulz quintic polynomial")
