"""Syntax errors as users should read them: a lark `UnexpectedInput` to a located `Problem`.

A known mistake is recognised by the parser state it stops in (the snippets of
`syntax_catalogue.SYNTAX_ERRORS`), or else by a terminal the parser would have accepted
(`ACCEPTED_LABELS`), so the message says "missing `by`" instead of "unexpected '}'". The caret
then goes where the mistake is (`syntax_catalogue.CARET`): after the previous token when
something is missing, under the unclosed bracket when one is never closed.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable

from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from nldsl.errors import Problem, Source
from nldsl.language.syntax_catalogue import (ACCEPTED_LABELS, CARET, MISSING_OPERAND, OPERATORS,
                                     SYNTAX_ERRORS, TOKEN_LABELS)

Label = tuple[str, str]
_LEXEME = re.compile(r'"[^"\n]*"|#[^\n]*|[A-Za-z_][A-Za-z0-9_]*|[0-9.]+(?:[eE][+-]?[0-9]+)?'
                     r'|\*\*|<-|->|[<>=!]=|\S')
_BRACKETS = {"(": ")", "{": "}", "[": "]"}
_HINTS = {label[0]: label[1] for label in SYNTAX_ERRORS}


def _error_key(error: UnexpectedInput) -> tuple[str, frozenset]:
    token = getattr(error, "token", None)
    accepts = getattr(error, "accepts", None) or getattr(error, "expected", None) or ()
    return (token.type if token is not None else "$END"), frozenset(accepts)


@lru_cache(maxsize=4)
def _catalogue_states(parse: Callable) -> list[tuple[Label, object, tuple[str, frozenset]]]:
    """(label, parser position, (token type, accepted terminals)) where each snippet fails."""
    found = []
    for label, snippets in SYNTAX_ERRORS.items():
        for snippet in snippets:
            try:
                parse(snippet)
            except (UnexpectedToken, UnexpectedEOF) as error:
                if error.state is not None:
                    found.append((label, error.state.position, _error_key(error)))
    return found


def _lexemes(text: str, end: int) -> list[tuple[str, int, int]]:
    """(text, start, end) of the tokens before offset `end`, comments skipped (approximate:
    enough to find brackets and token boundaries, not a second lexer)."""
    return [(m.group(), m.start(), m.end()) for m in _LEXEME.finditer(text, 0, end)
            if not m.group().startswith("#")]


def unclosed_bracket(text: str, end: int, opener: str) -> int | None:
    """Offset of the innermost `opener` before `end` that is never closed, if any."""
    stack: list[tuple[str, int]] = []
    for lexeme, start, _ in _lexemes(text, end):
        if lexeme in _BRACKETS:
            stack.append((lexeme, start))
        elif lexeme in _BRACKETS.values() and stack and _BRACKETS[stack[-1][0]] == lexeme:
            stack.pop()
    return next((start for lexeme, start in reversed(stack) if lexeme == opener), None)


def catalogue_label(error: UnexpectedInput, text: str, offset: int, at_end: bool,
                    parse: Callable) -> Label | None:
    """The label of the snippet that fails in the same parser state as `error` (preferring the
    same token and accepted terminals), else one chosen by the unexpected token (`TOKEN_LABELS`)
    or by a terminal the parser would have accepted (`ACCEPTED_LABELS`).

    lark's own `match_examples` also compares stack depths, which differ inside brackets, and
    lark 1.3.1 crashes formatting a debug message when the accepted terminals differ."""
    state = getattr(error, "state", None)
    if not isinstance(error, (UnexpectedToken, UnexpectedEOF)) or state is None:
        return None
    token_type, accepts = _error_key(error)
    best, best_score = None, 0
    for label, position, (other_type, other_accepts) in _catalogue_states(parse):
        if position != state.position:
            continue
        score = 1 + (other_type == token_type) + 2 * (other_accepts == accepts)
        if score > best_score:
            best, best_score = label, score
    if best is not None:
        return best
    if token_type in TOKEN_LABELS:
        return TOKEN_LABELS[token_type], _HINTS[TOKEN_LABELS[token_type]]
    previous = (_lexemes(text, offset) or [("", 0, 0)])[-1][0]
    if previous in OPERATORS and "NAME" in accepts:
        return MISSING_OPERAND, _HINTS[MISSING_OPERAND]
    for terminal, message in ACCEPTED_LABELS.items():
        opener = {"RPAR": "(", "RBRACE": "{"}.get(terminal)
        if terminal not in accepts or (terminal == "RBRACE" and not at_end):
            continue
        if opener is None or unclosed_bracket(text, offset, opener) is not None:
            return message, _HINTS[message]
    return None


def _line_col(text: str, offset: int) -> tuple[int, int]:
    return text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _caret(message: str | None, text: str, offset: int) -> tuple[int, int | None]:
    """(start, end) offsets of the caret for a label (end None: a single `^`)."""
    mode = CARET.get(message or "")
    previous = (_lexemes(text, offset) or [None])[-1]
    if mode == "after_previous" and previous:
        return previous[2], None
    if mode == "previous" and previous:
        return previous[1], previous[2]
    if mode == "unclosed":
        opener = "(" if "parenthesis" in message else "{"
        start = unclosed_bracket(text, offset, opener)
        if start is not None:
            return start, None
    return offset, None


def syntax_problem(error: UnexpectedInput, source: Source, parse: Callable, expected: str) -> Problem:
    """The located, explained problem for a parse failure (`expected`: what could come next)."""
    text = source.text
    token = getattr(error, "token", None)
    at_end = isinstance(error, UnexpectedEOF) or (token is not None and token.type == "$END")
    offset = len(text.rstrip()) if at_end else (error.pos_in_stream or 0)
    label = catalogue_label(error, text, offset, at_end, parse)
    message, hint = label if label else (None, None)
    if at_end:
        found = "end of the text"
    elif isinstance(error, UnexpectedCharacters):
        found = f"character {text[offset]!r}"
        hint = hint or "only names, numbers, strings, operators, brackets and `#` comments are allowed"
    else:
        found = repr(str(token))
    start, end = _caret(message, text, offset)
    line, col = _line_col(text, start)
    end_line, end_col = _line_col(text, end) if end is not None else (None, None)
    return Problem(message or f"unexpected {found}", max(line, 1), max(col, 1), end_line, end_col,
                   expected=expected,
                   hint=hint or "see grammar/nldsl.lark and docs/language.md for the syntax",
                   source=source)
