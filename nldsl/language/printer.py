"""AST to canonical text: the inverse of `nldsl.language.parser.parse`.

`format_spec(decl)` prints a whole spec, `format_expr(expr)` one expression. The output is
canonical (two-space indentation, one item per line, a blank line around each level, the
fewest parentheses the grammar's precedence allows), and it round-trips:
`parse(format_spec(d)) == d` for every AST the parser can produce (equality ignores spans).

Precedence, loosest first, as in grammar/nldsl.lark:

    a if c else b  <  or  <  and  <  not  <  comparison  <  + -  <  * / @  <  unary -  <  **
                   <  call, index  <  atoms

`**` is right-associative and its right operand may be a unary minus (`a ** -b`), while
`-a ** b` is `-(a ** b)`. Comparison is non-associative, so `(a < b) < c` keeps its
parentheses. Numbers print so they re-parse to the same value: ints as ints, floats by `repr`.
"""
from __future__ import annotations

from nldsl.language import ast

INDENT = "  "
MAX_HEADER_WIDTH = 88

# Binding strength of each expression form (higher binds tighter).
CONDITIONAL, OR, AND, NOT, COMPARISON, SUM, PRODUCT, NEGATION, POWER, POSTFIX, ATOM = range(11)

_BINARY_PRECEDENCE = {
    "or": OR, "and": AND,
    "<": COMPARISON, "<=": COMPARISON, ">": COMPARISON, ">=": COMPARISON, "==": COMPARISON,
    "!=": COMPARISON,
    "+": SUM, "-": SUM, "*": PRODUCT, "/": PRODUCT, "@": PRODUCT, "**": POWER,
}

# For each binary precedence: the loosest form allowed as (left, right) operand unparenthesised.
_OPERAND_PRECEDENCE = {
    OR: (OR, AND),
    AND: (AND, NOT),
    COMPARISON: (SUM, SUM),
    SUM: (SUM, PRODUCT),
    PRODUCT: (PRODUCT, NEGATION),
    POWER: (POSTFIX, NEGATION),
}


def precedence(expr: ast.Expr) -> int:
    """How tightly `expr`'s outermost form binds (one of the constants above)."""
    if isinstance(expr, ast.Conditional):
        return CONDITIONAL
    if isinstance(expr, ast.Binary):
        return _BINARY_PRECEDENCE[expr.op]
    if isinstance(expr, ast.Unary):
        return NOT if expr.op == "not" else NEGATION
    if isinstance(expr, (ast.Call, ast.Index)):
        return POSTFIX
    if isinstance(expr, ast.Number) and expr.value < 0:
        return NEGATION
    return ATOM


def format_number(value: int | float) -> str:
    """`3` stays an int, `3.0` stays a float; `repr` keeps every float's exact value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"not a number: {value!r}")
    return repr(value) if isinstance(value, float) else str(value)


def format_expr(expr: ast.Expr, min_precedence: int = CONDITIONAL) -> str:
    """`expr` as text; parenthesised if it binds looser than `min_precedence` requires."""
    text = _format_bare(expr)
    return f"({text})" if precedence(expr) < min_precedence else text


def _format_bare(expr: ast.Expr) -> str:
    if isinstance(expr, ast.Number):
        return format_number(expr.value)
    if isinstance(expr, ast.Bool):
        return "true" if expr.value else "false"
    if isinstance(expr, ast.String):
        return f'"{expr.value}"'
    if isinstance(expr, ast.Name):
        return expr.id
    if isinstance(expr, ast.Tuple):
        items = ", ".join(format_expr(item) for item in expr.items)
        return f"({items},)" if len(expr.items) == 1 else f"({items})"
    if isinstance(expr, ast.Call):
        return f"{expr.func}({format_arguments(expr.args, expr.kwargs)})"
    if isinstance(expr, ast.Index):
        return f"{format_expr(expr.value, POSTFIX)}[{format_expr(expr.index)}]"
    if isinstance(expr, ast.Unary):
        if expr.op == "not":
            return f"not {format_expr(expr.operand, NOT)}"
        operand = format_expr(expr.operand, NEGATION)
        # `- -a`, not `--a`, which reads like a decrement.
        return f"- {operand}" if operand.startswith("-") else f"-{operand}"
    if isinstance(expr, ast.Binary):
        left_min, right_min = _OPERAND_PRECEDENCE[_BINARY_PRECEDENCE[expr.op]]
        return f"{format_expr(expr.left, left_min)} {expr.op} {format_expr(expr.right, right_min)}"
    if isinstance(expr, ast.Conditional):
        return (f"{format_expr(expr.then, OR)} if {format_expr(expr.cond, OR)} "
                f"else {format_expr(expr.otherwise, CONDITIONAL)}")
    raise TypeError(f"not an expression node: {type(expr).__name__}")


def format_arguments(args: list[ast.Expr], kwargs: list[ast.Keyword]) -> str:
    """`a, b, name = c`: positional arguments first, as the AST keeps them."""
    parts = [format_expr(arg) for arg in args]
    parts += [f"{kw.name} = {format_expr(kw.value)}" for kw in kwargs]
    return ", ".join(parts)


# ---------------------------------------------------------------- hyper-parameters

def format_constraint(constraint: ast.Constraint) -> str:
    if isinstance(constraint, ast.Bound):
        return f"{constraint.op} {format_expr(constraint.value, SUM)}"
    if isinstance(constraint, ast.Interval):
        low = "[" if constraint.low_closed else "("
        high = "]" if constraint.high_closed else ")"
        return (f"in {low}{format_expr(constraint.low, SUM)}, "
                f"{format_expr(constraint.high, SUM)}{high}")
    options = ", ".join(format_expr(option, SUM) for option in constraint.options)
    return f"in {{{options}}}"


def format_hparam(hparam: ast.HParam) -> str:
    """`lr = 0.001 > 0`, `dim: int >= 1`, `betas = (0.9, 0.999) in [0, 1)`."""
    text = hparam.name
    if hparam.type is not None:
        text += f": {hparam.type}"
    if hparam.default is not None:
        text += f" = {format_expr(hparam.default, SUM)}"
    return " ".join([text] + [format_constraint(c) for c in hparam.constraints])


def _format_header(decl: ast.SpecDecl) -> list[str]:
    hparams = [format_hparam(h) for h in decl.hparams]
    one_line = f"{decl.kind} {decl.name}({', '.join(hparams)}) {{"
    if len(one_line) <= MAX_HEADER_WIDTH:
        return [one_line]
    return [f"{decl.kind} {decl.name}("] + [f"{INDENT}{h}," for h in hparams] + [") {"]


# ---------------------------------------------------------------- items

def format_shape(shape: ast.Shape) -> str:
    if isinstance(shape, ast.LikeShape):
        return f"like {shape.name}"
    if isinstance(shape, ast.ScalarShape):
        return ": scalar"
    if isinstance(shape, ast.TensorShape):
        return f": [{', '.join(format_expr(d, SUM) for d in shape.dims)}]"
    widths = " -> ".join(format_expr(w, SUM) for w in shape.widths)
    return f": mlp({', '.join([widths] + list(shape.options))})"


def format_rule(rule: ast.Rule) -> str:
    """`ema(0.9)`; a rule without arguments prints bare: `sign`."""
    if not rule.args and not rule.kwargs:
        return rule.name
    return f"{rule.name}({format_arguments(rule.args, rule.kwargs)})"


def format_item(item: ast.SpecItem | ast.LevelItem) -> str:
    """One state, definition, objective, update, read or output, on one line."""
    if isinstance(item, ast.State):
        text = f"state {item.name} {format_shape(item.shape)}"
        if isinstance(item.init, ast.InitValue):
            text += f" = {format_expr(item.init.value)}"
        elif isinstance(item.init, ast.InitLearned):
            text += " init learned" + (f" by {item.init.by}" if item.init.by else "")
        return text
    if isinstance(item, ast.Context):
        return f"{item.role} {item.name} = {format_expr(item.value)}"
    if isinstance(item, ast.Objective):
        prefix = f"{item.state}: " if item.state else ""
        rules = " then ".join(format_rule(rule) for rule in item.rules)
        return f"{prefix}minimize {format_expr(item.loss)} by {rules}"
    if isinstance(item, ast.Update):
        return f"{item.target} <- {format_expr(item.value)}"
    if isinstance(item, ast.Read):
        return f"read {item.name} = {format_expr(item.value)}" + (
            " before write" if item.before_write else "")
    if isinstance(item, ast.Output):
        return f"out = {format_expr(item.value)}"
    raise TypeError(f"not a spec item: {type(item).__name__}")


def format_level(level: ast.Level) -> list[str]:
    """`level NAME every N unit [options] {`, its items one per line, `}`."""
    is_one = isinstance(level.every, ast.Number) and level.every.value == 1
    head = f"level {level.name} every {format_expr(level.every, SUM)} {level.unit}"
    head += "" if is_one else "s"
    if level.chunk is not None:
        head += f" chunk {format_expr(level.chunk, SUM)}"
    if level.heads is not None:
        head += f" heads {format_expr(level.heads, SUM)}"
    if level.backprop:
        head += " backprop"
    if level.partial is not None:
        head += f" partial {level.partial}"
    if level.once:
        head += " once"
    body = [INDENT + format_item(item) for item in level.items]
    return [head + " {"] + body + ["}"] if body else [head + " { }"]


def format_spec(decl: ast.SpecDecl) -> str:
    """The whole spec as canonical text, ending with a newline."""
    body: list[str] = []
    for index, item in enumerate(decl.items):
        is_level = isinstance(item, ast.Level)
        after_level = index > 0 and isinstance(decl.items[index - 1], ast.Level)
        if body and (is_level or after_level):
            body.append("")
        lines = format_level(item) if is_level else [format_item(item)]
        body += [INDENT + line if line else line for line in lines]
    return "\n".join(_format_header(decl) + body + ["}"]) + "\n"
