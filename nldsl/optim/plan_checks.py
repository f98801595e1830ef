"""Refusals of a lowered optimizer `Plan` that do not depend on a parameter's shape, made once
for both schedules (a located `NLDSLCompileError`): a number, or a truth value, where `@`,
`outer`, `trace`, `size`, `ndim` or `newton_schulz` needs a tensor; a state that a
`newton_schulz` rule restarts every step, read before its write. Pure data; no torch.
"""
from __future__ import annotations

from nldsl.language import ast
from nldsl.language.consteval import calls_in, children, names_in
from nldsl.lower.derive import located
from nldsl.optim.ir import Plan, Write


#: Built-ins whose argument at these positions must be a tensor (a matrix or vector), and `@`.
TENSOR_ARGUMENTS = {"outer": (0, 1), "trace": (0,), "newton_schulz": (0,), "size": (0,), "ndim": (0,)}
#: Built-ins whose value is a number (a Python number or a 0-d tensor), whatever the arguments.
NUMBER_CALLS = {"dot", "l2", "lp", "huber", "orthogonality", "trace", "size", "ndim"}


def check_plan(plan: Plan) -> None:
    """A number where a matrix is needed (`X @ dot(a, b)`). (A write that uses a plain read of
    its own level, a same-unit cycle, is the validator's: validation/levels.py's _check_own_reads.)"""
    kinds = _kinds(plan)
    for level in plan.levels:
        for part in _level_parts(level):
            _check_tensor_arguments(part, kinds, plan.source)
    _check_restarted_reads(plan)


def _check_restarted_reads(plan: Plan) -> None:
    """A state a `newton_schulz` rule restarts every step is not kept between steps (its
    StatePlan is not persistent: the rule starts again from the initial value), so nothing
    evaluated before its write has a value of it: no context or `before write` read (every one
    is computed before the step's first write, docs/language.md), and nothing of a level that
    writes before its own."""
    restarted = {name for name, s in plan.states.items() if not s.persistent}
    written: set[str] = set()
    early = [p for lv in plan.levels for p in lv.contexts.values()]
    early += [v for lv in plan.levels for v, before in lv.reads.values() if before]
    for level in plan.levels:
        for part in early:
            _refuse_restarted(part, restarted - written, plan.source)
        for write in level.writes:          # in order: the restart's own steps read it
            if write.restart is None:
                for part in _write_parts(write):
                    _refuse_restarted(part, restarted - written, plan.source)
            written |= {write.target} & restarted
        early = [v for v, before in level.reads.values() if not before]
    for part in early:
        _refuse_restarted(part, restarted - written, plan.source)


def _refuse_restarted(expr: ast.Expr, unwritten: set[str], source) -> None:
    for name in names_in(expr):
        if name.id in unwritten:
            raise located(name, f"{name.id} is restarted from its initial value every step by "
                          "its newton_schulz rule and not kept between steps, so it has no value "
                          "before its write, where this reads it", f"a value of this step: "
                          f"{name.id} read after its write (by an update or a read of its level)",
                          f"read what {name.id} orthogonalises instead, or keep {name.id} with an "
                          f"explicit update ({name.id} <- newton_schulz(...))", source)


def _write_parts(write: Write) -> list:
    parts = [write.value, write.restart, write.repeat]
    if write.autograd is not None:
        parts += [write.autograd.loss, write.autograd.lr, write.autograd.decay]
    return [p for p in parts if p is not None]


def _level_parts(level) -> list:
    parts = [p for w in level.writes for p in _write_parts(w)]
    return parts + list(level.contexts.values()) + [v for v, _ in level.reads.values()]


def _kinds(plan: Plan) -> tuple[set[str], set[str]]:
    """(numbers, truths): hyper-parameters and `step`, and the contexts and reads whose value is
    a number; the contexts and reads whose value is a truth value (a comparison, `not`, ...)."""
    from nldsl.optim.snapshot import dependency_order   # snapshot imports plan, which imports us
    numbers, truths = set(plan.hparams) | set(plan.folded) | {"step"}, set()
    items = {n: v for lv in plan.levels for n, v in lv.contexts.items()}
    items |= {n: v for lv in plan.levels for n, (v, _) in lv.reads.items()}
    for name, value in dependency_order(items):
        if is_number(value, numbers):
            numbers.add(name)
        if is_truth(value, truths):
            truths.add(name)
    return numbers, truths


_LOGICAL = {"<", "<=", ">", ">=", "==", "!=", "and", "or"}


def is_truth(expr: ast.Expr, truths: set[str]) -> bool:
    """Is expr a truth value (torch: a bool tensor, which `@` does not promote)?"""
    if isinstance(expr, ast.Bool):
        return True
    if isinstance(expr, ast.Name):
        return expr.id in truths
    if isinstance(expr, ast.Binary):
        return expr.op in _LOGICAL
    if isinstance(expr, ast.Unary):
        return expr.op == "not" or is_truth(expr.operand, truths)
    if isinstance(expr, ast.Conditional):
        return is_truth(expr.then, truths) and is_truth(expr.otherwise, truths)
    return False


def is_number(expr: ast.Expr, numbers: set[str]) -> bool:
    """Is expr a number on every parameter (never a tensor of W's shape)? Objectives, `trace`,
    `size` and `ndim` are, and arithmetic of numbers; a memory applied or a tensor name is not."""
    if isinstance(expr, (ast.Number, ast.Bool, ast.String)):
        return True
    if isinstance(expr, ast.Name):
        return expr.id in numbers
    if isinstance(expr, ast.Call):
        return expr.func in NUMBER_CALLS
    if isinstance(expr, ast.Binary) and expr.op != "@":
        return is_number(expr.left, numbers) and is_number(expr.right, numbers)
    if isinstance(expr, ast.Unary):
        return is_number(expr.operand, numbers)
    if isinstance(expr, ast.Conditional):
        return all(is_number(e, numbers) for e in (expr.cond, expr.then, expr.otherwise))
    if isinstance(expr, ast.Index):
        return is_number(expr.value, numbers)
    return isinstance(expr, ast.Tuple)


def _check_tensor_arguments(expr: ast.Expr, kinds: tuple[set, set], source) -> None:
    """`a @ b`, `outer(a, b)`, `trace(a)`, ... with a number, or a truth value for `@`, `outer`
    and `trace`, for a or b: a located error (torch would raise at the first step, in both
    schedules alike)."""
    numbers, truths = kinds
    found = [(e, [e.left, e.right], "`@`") for e in _matmuls(expr)]
    found += [(c, [c.args[i] for i in TENSOR_ARGUMENTS[c.func] if i < len(c.args)], f"`{c.func}`")
              for c in calls_in(expr) if c.func in TENSOR_ARGUMENTS]
    for node, operands, what in found:
        for operand in operands:
            number = is_number(operand, numbers)
            if number or what in ("`@`", "`outer`", "`trace`") and is_truth(operand, truths):
                where = next((e for e in (operand, node, expr) if e.span.line), operand)
                kind = "a number" if number else "a truth value"
                raise located(where, f"{what} needs a tensor of numbers here, and this is {kind}",
                              "a matrix or vector (W, grad(W), a state, ...)",
                              "scale by a number with `*`; parenthesise `a @ (s * b)`" if number
                              else "select numbers with it: `(1 if a > b else 0)`", source)


def _matmuls(expr):
    todo = [expr]
    while todo:
        e = todo.pop()
        if isinstance(e, ast.Binary) and e.op == "@":
            yield e
        todo += [c for c in children(e) if isinstance(c, ast.Node)]
