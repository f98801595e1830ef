"""Known syntax mistakes, as data: each (message, hint) label with snippets that make it.

`parser._syntax_problem` re-parses these with lark's `match_examples`: when a user's error
leaves the parser in the same state as one of the snippets, the user sees that label's message
instead of a bare "unexpected token". tests/test_syntax_catalogue.py checks every snippet.
"""
from __future__ import annotations

_HEAD = "optimizer o(lr = 0.1) {\n"
_MOD = "module m(dim) {\n"

SYNTAX_ERRORS: dict[tuple[str, str], list[str]] = {
    ("missing `by` and a learning rule after the objective",
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
    ("`=` is a definition; an update of a state is written with `<-`",
     "write `W <- W - lr * m` to update, or `let name = expr` to define"): [
        _HEAD + "level a every 1 step { W = W - lr }\n}",
    ],
    ("unclosed parenthesis", "add the missing `)`"): [
        _HEAD + "level a every 1 step { W <- (W - lr\n }\n}",
        _HEAD + "level a every 1 step { W <- f(W\n }\n}",
    ],
    ("unmatched closing parenthesis", "remove the extra `)` or add the matching `(`"): [
        _HEAD + "level a every 1 step { W <- W - lr) }\n}",
    ],
    ("unclosed `{`: a level or spec body is not closed", "add the missing `}`"): [
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
    ("missing operand", "an operator needs an expression on both sides"): [
        _HEAD + "level a every 1 step { W <- W - }\n}",
        _HEAD + "level a every 1 step { W <- W * * lr }\n}",
    ],
    ("two expressions with no operator between them", "add an operator such as `*` or `+`"): [
        _HEAD + "level a every 1 step { W <- W lr }\n}",
        _HEAD + "level a every 1 step { W <- 2 W }\n}",
    ],
    ("a definition needs a role: key, value, query, gate or let",
     "e.g. `key k = x @ Wk` or `let h = relu(x)`"): [
        _MOD + "level a every 1 token { k = x }\n}",
    ],
    ("`read` defines a level's output: `read NAME = expr`", "e.g. `read y = M(q)`"): [
        _MOD + "level a every 1 token { read M(q) }\n}",
    ],
    ("a level cannot be nested inside another level; levels are listed slow to fast at the top",
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
