"""docs/language.md against the code it describes: the tables of built-ins, rules and mlp
options are rendered from nldsl/language/builtins.py (who may use each built-in, where, and whether each
compiler computes it), and the numbers the prose quotes are the runtime's.

The generated tables sit between `<!-- generated: NAME -->` and `<!-- end generated: NAME -->`.
After a deliberate change of the vocabulary, `NLDSL_BLESS=1 pytest tests/test_docs_language.py`
rewrites them; read the diff before committing it.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from nldsl.language.builtins import (EXPRESSION, FUNCTIONS, INIT, MLP_ACTIVATIONS, MLP_OPTIONS, OBJECTIVE, PLACES,
                            RULES, Builtin)
from nldsl.lower.unsupported import UNSUPPORTED_CALLS, UNSUPPORTED_LAST, UNSUPPORTED_RULES

DOC = Path(__file__).resolve().parents[1] / "docs" / "language.md"
BLESS = os.environ.get("NLDSL_BLESS") == "1"

#: The built-in tables of the doc: a heading and the roles (builtins.Builtin.role) it holds.
GROUPS = [
    ("Functions (elementwise, reductions, gradient flow)", {"math"}),
    ("Gradients", {"context"}),
    ("Sequence mixing", {"sequence"}),
    ("Pooling over a level's period", {"period"}),
    ("Objectives (internal losses)", {"objective", "window"}),
    ("Initial values", {"init"}),
    ("Aggregation of parallel branches", {"aggregate"}),
]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def signature(name: str, builtin: Builtin) -> str:
    """`clamp(a, low, high)`, `normal(std?)` (optional after min_args), `concat(a, ...)`."""
    params = [p if i < builtin.min_args else f"{p}?" for i, p in enumerate(builtin.params)]
    return f"`{name}({', '.join(params + ['...'] * builtin.variadic)})`"


def optimizers(builtin: Builtin, name: str) -> str:
    if "optimizer" not in builtin.kinds:
        return "no"
    return "yes" if builtin.optimizer_ok else "not yet"


def modules(builtin: Builtin, name: str) -> str:
    if "module" not in builtin.kinds:
        return "no"
    return "not yet" if name in UNSUPPORTED_CALLS else "yes"


def where(builtin: Builtin) -> str:
    if builtin.places == PLACES:
        return "any expression"
    words = {OBJECTIVE: "a `minimize` loss", INIT: "a state's initial value",
             EXPRESSION: "a context of a token level"}     # the period role (check_period_calls)
    return " or ".join(words[p] for p in sorted(builtin.places))


def builtins_block() -> str:
    parts = []
    for heading, roles in GROUPS:
        rows = [f"| {signature(n, b)} | {_cell(b.doc)} | {optimizers(b, n)} | {modules(b, n)} | "
                f"{where(b)} |" for n, b in FUNCTIONS.items() if b.role in roles]
        parts.append(f"**{heading}**\n\n| call | meaning | optimizers | modules | where |\n"
                     "|---|---|---|---|---|\n" + "\n".join(rows))
    return "\n\n".join(parts)


def _literal(value) -> str:
    """A default as the language writes it: `true`, `"quintic"`, `1e-7`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return _number(value) if isinstance(value, float) else repr(value)


def _number(value: float) -> str:
    """`1e-05` as the doc writes it, `1e-5`."""
    return re.sub(r"e-0(\d)", r"e-\1", f"{value:g}")


def rules_block() -> str:
    rows = []
    for name, rule in RULES.items():
        params = [p if p not in rule.defaults else f"[{p}]" if rule.defaults[p] is None else
                  f"{p} = {_literal(rule.defaults[p])}" for p in rule.params]   # [p]: optional
        modules = "not yet" if name in UNSUPPORTED_RULES else \
            "inside a chain" if name in UNSUPPORTED_LAST else "yes"
        rows.append(f"| `{name}({', '.join(params)})` | {_cell(rule.doc)} | yes | {modules} |")
    return ("| rule | update | optimizers | modules |\n|---|---|---|---|\n" + "\n".join(rows))


def mlp_block() -> str:
    rows = [f"| `{name}` | activation | {_cell(doc)} |" for name, doc in MLP_ACTIVATIONS.items()]
    rows += [f"| `{name}` | option | {_cell(doc)} |" for name, doc in MLP_OPTIONS.items()]
    return "| word | kind | meaning |\n|---|---|---|\n" + "\n".join(rows)


BLOCKS = {"builtins": builtins_block, "rules": rules_block, "mlp options": mlp_block}


def _pattern(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- generated: {re.escape(name)} [^>]*-->\n)(.*?)(\n<!-- end generated: "
                      rf"{re.escape(name)} -->)", re.S)


@pytest.mark.parametrize("name", list(BLOCKS))
def test_generated_tables_match_the_vocabulary(name):
    text = DOC.read_text()
    match = _pattern(name).search(text)
    assert match, f"docs/language.md has no `<!-- generated: {name} ... -->` block"
    expected = BLOCKS[name]()
    if BLESS and match.group(2) != expected:
        DOC.write_text(text[:match.start(2)] + expected + text[match.end(2):])
        text = DOC.read_text()
        match = _pattern(name).search(text)
    assert match.group(2) == expected


def test_every_builtin_has_one_row():
    block = _pattern("builtins").search(DOC.read_text()).group(2)
    rows = re.findall(r"^\| `([a-z_0-9]+)\(", block, flags=re.M)
    assert sorted(rows) == sorted(FUNCTIONS)


def test_the_epsilons_the_doc_quotes_are_the_runtime_s():
    from nldsl.runtime.functions import L2NORM_EPS, NORM_EPS

    text = DOC.read_text()
    assert f"mean(a²) + {_number(NORM_EPS)})" in text
    assert f"sqrt(var + {_number(NORM_EPS)})" in text
    assert f"max(‖a‖, {_number(L2NORM_EPS)})" in text
