"""Text to AST. The only module that sees a lark `Tree`; it imports no torch.

`parse(text, filename)` returns an `ast.SpecDecl` or raises `NLDSLSyntaxError` whose message names
`file:line:col`, shows the line with a caret, says what was expected and how to fix it. Known
mistakes are recognised against the catalogue in `syntax_catalogue.py` (see `syntax_errors.py`),
so the message says "missing `by`" instead of "unexpected token".
"""
from __future__ import annotations

import sys
from functools import lru_cache
from importlib import resources

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedInput, VisitError

from nldsl.language import ast
from nldsl.errors import NLDSLSyntaxError, Problem, Source
from nldsl.language.syntax_catalogue import TOKEN_NAMES
from nldsl.language.syntax_errors import syntax_problem


def grammar_text() -> str:
    """The grammar shipped inside the package (`nldsl/grammar/nldsl.lark`)."""
    return resources.files("nldsl.grammar").joinpath("nldsl.lark").read_text()


@lru_cache(maxsize=1)
def lark_parser() -> Lark:
    return Lark(grammar_text(), parser="lalr", strict=True, propagate_positions=True,
                maybe_placeholders=True)


def _span(meta) -> ast.Span:
    if getattr(meta, "empty", True):
        return ast.NO_SPAN
    return ast.Span(line=meta.line, col=meta.column, end_line=meta.end_line, end_col=meta.end_column)


def _token_span(token: Token) -> ast.Span:
    return ast.Span(line=token.line, col=token.column, end_line=token.end_line, end_col=token.end_column)


def _number(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


@v_args(meta=True)
class _ToAst(Transformer):
    """Bottom-up: children arrive already converted."""

    def start(self, meta, children):
        return children[0]

    def spec(self, meta, children):
        kind, name, hparams, *items = children
        return ast.SpecDecl(kind=str(kind), name=str(name), hparams=hparams or [], items=items,
                        span=_span(meta))

    def hparams(self, meta, children):
        return [c for c in children if c is not None]

    def hparam(self, meta, children):
        name, type_name, default, *constraints = children
        return ast.HParam(name=str(name), type=str(type_name) if type_name else None,
                          default=default, constraints=constraints, span=_span(meta))

    def bound(self, meta, children):
        op, value = children
        return ast.Bound(op=str(op), value=value, span=_span(meta))

    def interval(self, meta, children):
        low_bracket, low, high, high_bracket = children
        return ast.Interval(low=low, high=high, low_closed=low_bracket == "[",
                            high_closed=high_bracket == "]", span=_span(meta))

    def choice(self, meta, children):
        return ast.Choice(options=children, span=_span(meta))

    def open_bracket(self, meta, children):
        return str(children[0])

    close_bracket = open_bracket
    unit = open_bracket
    partial_mode = open_bracket
    context_kind = open_bracket

    def output(self, meta, children):
        return ast.Output(value=children[0], span=_span(meta))

    def level(self, meta, children):
        name, every, unit, *rest = children
        options = {"chunk": None, "heads": None, "backprop": False, "partial": None,
                   "once": False}
        items = []
        for child in rest:
            if isinstance(child, tuple):
                options[child[0]] = child[1]
            else:
                items.append(child)
        return ast.Level(name=str(name), every=every, unit=unit.rstrip("s"), items=items,
                         span=_span(meta), **options)

    def chunk_option(self, meta, children):
        return ("chunk", children[0])

    def heads_option(self, meta, children):
        return ("heads", children[0])

    def backprop_option(self, meta, children):
        return ("backprop", True)

    def partial_option(self, meta, children):
        return ("partial", children[0])

    def once_option(self, meta, children):
        return ("once", True)

    def state(self, meta, children):
        name, shape, init = children
        return ast.State(name=str(name), shape=shape, init=init, span=_span(meta))

    def like_shape(self, meta, children):
        return ast.LikeShape(name=str(children[0]), span=_span(meta))

    def tensor_shape(self, meta, children):
        return ast.TensorShape(dims=children, span=_span(meta))

    def scalar_shape(self, meta, children):
        return ast.ScalarShape(span=_span(meta))

    def mlp_shape(self, meta, children):
        widths = [c for c in children if not isinstance(c, Token)]
        options = [str(c) for c in children if isinstance(c, Token)]
        return ast.MLPShape(widths=widths, options=options, span=_span(meta))

    def init_value(self, meta, children):
        return ast.InitValue(value=children[0], span=_span(meta))

    def init_learned(self, meta, children):
        by = children[0] if children else None
        return ast.InitLearned(by=str(by) if by else None, span=_span(meta))

    def context(self, meta, children):
        role, name, value = children
        return ast.Context(role=role, name=str(name), value=value, span=_span(meta))

    def objective(self, meta, children):
        state, loss, *rules = children
        return ast.Objective(state=str(state) if state else None, loss=loss, rules=rules,
                             span=_span(meta))

    def rule(self, meta, children):
        name, arguments = children
        args, kwargs = arguments or ([], [])
        return ast.Rule(name=str(name), args=args, kwargs=kwargs, span=_span(meta))

    def update(self, meta, children):
        target, value = children
        return ast.Update(target=str(target), value=value, span=_span(meta))

    def read(self, meta, children):
        name, value, before = children
        return ast.Read(name=str(name), value=value, before_write=before is not None,
                        span=_span(meta))

    def before_write(self, meta, children):
        return True

    # ---- expressions
    def conditional(self, meta, children):
        then, cond, otherwise = children
        return ast.Conditional(cond=cond, then=then, otherwise=otherwise, span=_span(meta))

    def _binary(op):
        def build(self, meta, children):
            left, right = children
            return ast.Binary(op=op, left=left, right=right, span=_span(meta))
        return build

    or_op = _binary("or")
    and_op = _binary("and")
    add = _binary("+")
    sub = _binary("-")
    mul = _binary("*")
    div = _binary("/")
    matmul = _binary("@")
    pow = _binary("**")

    def compare(self, meta, children):
        left, op, right = children
        return ast.Binary(op=str(op), left=left, right=right, span=_span(meta))

    def not_op(self, meta, children):
        return ast.Unary(op="not", operand=children[0], span=_span(meta))

    def neg(self, meta, children):
        return ast.Unary(op="-", operand=children[0], span=_span(meta))

    def call(self, meta, children):
        func, arguments = children
        args, kwargs = arguments or ([], [])
        return ast.Call(func=str(func), args=args, kwargs=kwargs, span=_span(meta))

    def arguments(self, meta, children):
        args = [c for c in children if c is not None and not isinstance(c, ast.Keyword)]
        kwargs = [c for c in children if isinstance(c, ast.Keyword)]
        return args, kwargs

    def keyword(self, meta, children):
        name, value = children
        return ast.Keyword(name=str(name), value=value, span=_span(meta))

    def index(self, meta, children):
        value, index = children
        return ast.Index(value=value, index=index, span=_span(meta))

    def number(self, meta, children):
        return ast.Number(value=_number(str(children[0])), span=_token_span(children[0]))

    def name(self, meta, children):
        return ast.Name(id=str(children[0]), span=_token_span(children[0]))

    def string(self, meta, children):
        return ast.String(value=str(children[0])[1:-1], span=_token_span(children[0]))

    def true(self, meta, children):
        return ast.Bool(value=True, span=_span(meta))

    def false(self, meta, children):
        return ast.Bool(value=False, span=_span(meta))

    def tuple(self, meta, children):
        return ast.Tuple(items=[c for c in children if c is not None], span=_span(meta))


def _token_name(terminal: str) -> str:
    if terminal in TOKEN_NAMES:
        return TOKEN_NAMES[terminal]
    try:
        pattern = lark_parser().get_terminal(terminal).pattern
    except KeyError:
        return terminal.lower()
    return f"`{pattern.value}`" if pattern.type == "str" else terminal.lower()


def _expected(error: UnexpectedInput) -> str:
    names = {_token_name(t) for t in getattr(error, "expected", set()) or
             getattr(error, "allowed", set()) or set()}
    # kinds of token ("a name", "a number") first, then keywords and punctuation
    names = sorted(names, key=lambda n: (not n.startswith(("a ", "an ")), n))
    if not names:
        return "the end of the spec"
    if len(names) > 8:
        names = names[:8] + [f"or one of {len(names) - 8} more"]
    return ", ".join(names)


#: Every later stage (build, validate, lower, code generation) walks an expression recursively,
#: a few Python frames per level of nesting; a spec may nest as deep as the interpreter's
#: recursion limit allows at this many frames per level (125 levels by default, where the
#: standard library needs 16), so no stage ever meets a RecursionError.
FRAMES_PER_LEVEL = 8


def max_depth() -> int:
    return sys.getrecursionlimit() // FRAMES_PER_LEVEL


def _deepest(tree: Tree) -> tuple[int, Tree]:
    """(depth, node) of the most deeply nested node, found without recursion."""
    deepest_depth, deepest, stack = 0, tree, [(0, tree)]
    while stack:
        depth, node = stack.pop()
        if depth > deepest_depth:
            deepest_depth, deepest = depth, node
        stack += [(depth + 1, child) for child in node.children if isinstance(child, Tree)]
    return deepest_depth, deepest


def _too_deep_problem(tree: Tree, source: Source) -> Problem:
    """Point at the most deeply nested node."""
    depth, deepest = _deepest(tree)
    meta = deepest.meta
    line, col = (meta.line, meta.column) if not meta.empty else (1, 1)
    return Problem(f"expression nested too deeply ({depth} levels, at most {max_depth()})", line,
                   col, expected=f"at most {max_depth()} levels of nesting",
                   hint="name the inner parts with `let` definitions", source=source)


def parse(text: str, filename: str = "<string>") -> ast.SpecDecl:
    """Parse one spec. Raises `NLDSLSyntaxError` with a located, explained message."""
    source = Source(text, filename)
    try:
        tree = lark_parser().parse(text)
    except UnexpectedInput as error:
        raise NLDSLSyntaxError([syntax_problem(error, source, lark_parser().parse,
                                               _expected(error))]) from None
    if _deepest(tree)[0] > max_depth():
        raise NLDSLSyntaxError([_too_deep_problem(tree, source)])
    try:
        return _ToAst().transform(tree)
    except RecursionError:
        raise NLDSLSyntaxError([_too_deep_problem(tree, source)]) from None
    except VisitError as error:
        if isinstance(error.orig_exc, RecursionError):
            raise NLDSLSyntaxError([_too_deep_problem(tree, source)]) from None
        meta = getattr(error.obj, "meta", None)
        line, col = (meta.line, meta.column) if meta is not None and not meta.empty else (1, 1)
        raise NLDSLSyntaxError([Problem(f"malformed {error.rule}: {error.orig_exc}", line, col,
                                        source=source)]) from None
