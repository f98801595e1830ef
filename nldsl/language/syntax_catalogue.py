"""Known syntax mistakes, as data: each (message, hint) label with snippets that make it.

`syntax_errors.syntax_problem` re-parses these: when a user's error
leaves the parser in the same state as one of the snippets, the user sees that label's message
instead of a bare "unexpected token". tests/test_language_syntax_catalogue.py checks every snippet.
"""
from __future__ import annotations

_HEAD = "optimizer o(lr = 0.1) {\n"
_MOD = "module m(dim) {\n"

MISSING_BY = "missing `by` and a learning rule after the objective"
UNCLOSED_PAREN = "unclosed parenthesis"
UNCLOSED_BRACE = "unclosed `{`: a level or spec body is not closed"
JUXTAPOSED = "two expressions with no operator between them"
MISSING_OPERAND = "missing operand"
#: Operators that need an operand after them: ending an expression on one is a missing operand.
OPERATORS = {"+", "-", "*", "/", "@", "**", "<", "<=", ">", ">=", "==", "!=", "and", "or", "not"}
NESTED_LEVEL = ("a level cannot be nested inside another level; levels are listed slow to fast at "
                "the top")


SYNTAX_ERRORS: dict[tuple[str, str], list[str]] = {
    (MISSING_BY,
     "write `minimize <loss> by <rule>`, e.g. `minimize l2(M(k), v) by gd(lr = 0.1)`"): [
        _HEAD + "level a every 1 step { state m like W = 0\n minimize -dot(m, g) }\n}",
        _HEAD + "level a every 1 step { minimize l2(M(k), v)\n state m like W }\n}",
    ],
    ("a level needs a frequency: `every N steps` or `every N tokens`",
     "write e.g. `level moments every 1 step { ... }`"): [
        _HEAD + "level a { }\n}",
        _HEAD + "level a chunk 4 { }\n}",
    ],
    ("the frequency needs a unit",
     "write `every N steps` (optimizers) or `every N tokens` (modules)"): [
        _HEAD + "level a every 1 { }\n}",
        _HEAD + "level a every 2 chunk 4 { }\n}",
    ],
    ("a state needs a shape",
     "write `state m like W`, `state M : [d, d]`, `state s : scalar` or `state M : mlp(d -> d)`"): [
        _HEAD + "level a every 1 step { state m = 0 }\n}",
        _HEAD + "level a every 1 step { state m }\n}",
    ],
    (JUXTAPOSED, "add an operator such as `*` or `+`; if a new definition starts here, give it a "
     "role (`let`, `key`, ...) or write an update with `<-`"): [
        _HEAD + "level a every 1 step { W <- W lr }\n}",
        _HEAD + "level a every 1 step { W <- 2 W }\n}",
    ],
    # `k = x` and `W = W - lr` leave the parser in the same state, so one label covers both.
    ("a definition needs a role (key, value, query, gate or let); an update is written with `<-`",
     "write `let h = relu(x)` or `key k = x @ Wk` to define a name, `W <- W - lr * m` to update "
     "a state"): [
        _HEAD + "level a every 1 step { W = W - lr }\n}",
        _MOD + "level a every 1 token { k = x }\n}",
        _MOD + "state Wk : [dim, dim]\nk = x @ Wk\n}",
    ],
    (UNCLOSED_PAREN, "add the missing `)`"): [
        _HEAD + "level a every 1 step { W <- (W - lr\n }\n}",
        _HEAD + "level a every 1 step { W <- f(W\n }\n}",
    ],
    ("unmatched closing parenthesis", "remove the extra `)` or add the matching `(`"): [
        _HEAD + "level a every 1 step { W <- W - lr) }\n}",
    ],
    (UNCLOSED_BRACE, "add the missing `}`; braces are matched by counting, so the missing one "
     "may close a level inside this body"): [
        _HEAD + "level a every 1 step { W <- W\n",
        _HEAD + "level a every 1 step { W <- W }\n",
    ],
    ("a spec starts with `optimizer NAME(...)` or `module NAME(...)`",
     "e.g. `optimizer sgd(lr = 0.01 > 0) { ... }`"): [
        "level a every 1 step { }",
        "optimiser o() { }",
        "sgd(lr = 0.1) { }",
    ],
    ("the hyper-parameter list needs parentheses, even when empty",
     "write `optimizer NAME() { ... }`"): [
        "optimizer o { }",
        "module m { }",
    ],
    ("a hyper-parameter is `name [: type] [= default] [range]`",
     "e.g. `lr = 1e-3 > 0`, `betas = (0.9, 0.999) in [0, 1)`, `dim: int >= 1`"): [
        "optimizer o(0.1) { }",
        "optimizer o(lr 0.1) { }",
        "optimizer o(lr = 0.1 0.2) { }",
    ],
    ("a range is written `in [low, high]` with `[`/`(` and `]`/`)` for closed/open ends",
     "e.g. `beta = 0.9 in [0, 1)`"): [
        "optimizer o(b = 0.9 in 0, 1) { }",
        "optimizer o(b = 0.9 in [0 1]) { }",
    ],
    (MISSING_OPERAND, "an operator needs an expression on both sides"): [
        _HEAD + "level a every 1 step { W <- W - }\n}",
        _HEAD + "level a every 1 step { W <- W * * lr }\n}",
    ],
    ("`read` defines a level's output: `read NAME = expr`", "e.g. `read y = M(q)`"): [
        _MOD + "level a every 1 token { read M(q) }\n}",
    ],
    (NESTED_LEVEL,
     "move the inner level out of the outer level's braces"): [
        _HEAD + "level a every 2 steps { level b every 1 step { } }\n}",
    ],
    ("the module output is written `out = expr`", "e.g. `out = y @ Wo`"): [
        _MOD + "out y\n}",
    ],
}

TOKEN_NAMES = {
    "NAME": "a name", "NUMBER": "a number", "STRING": "a string", "LPAR": "`(`", "RPAR": "`)`",
    "LSQB": "`[`", "RSQB": "`]`", "LBRACE": "`{`", "RBRACE": "`}`", "COMMA": "`,`",
    "COLON": "`:`", "EQUAL": "`=`", "PLUS": "`+`", "MINUS": "`-`", "STAR": "`*`", "SLASH": "`/`",
    "AT": "`@`", "CMP_OP": "a comparison", "SPEC_KIND": "`optimizer` or `module`",
    "TYPE_NAME": "a type (int, float, bool, str)", "$END": "the end of the text",
}

#: Where the caret goes for a label (default: at the token the parser stopped on).
#: `after_previous`: something is missing right after the last token (the parser often stops on
#: the next line); `previous`: the last token is the culprit (`W <- W lr }` stops at `}`, but the
#: mistake is `lr`); `unclosed`: the opening bracket that is never closed.
CARET = {
    MISSING_BY: "after_previous",
    "the frequency needs a unit": "after_previous",
    MISSING_OPERAND: "after_previous",
    UNCLOSED_PAREN: "unclosed",
    UNCLOSED_BRACE: "unclosed",
    JUXTAPOSED: "previous",
}

#: When no snippet fails in the same parser state: a label chosen by a terminal the parser would
#: have accepted (LALR stops in a different state for each way an expression can end, so these
#: are more robust than snippets). `(` / `{` rules apply only when a bracket is really unclosed.
ACCEPTED_LABELS = {"BY": MISSING_BY, "RPAR": UNCLOSED_PAREN, "RBRACE": UNCLOSED_BRACE}

#: Tokens that are a mistake wherever the parser meets them unexpectedly (checked first).
TOKEN_LABELS = {"LEVEL": NESTED_LEVEL}
