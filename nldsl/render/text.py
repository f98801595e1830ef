"""Expression text for diagram labels: the printer's canonical text, made to read like the paper.

- identifiers that are Greek letter names print as the letter (`eta` -> η, `beta1` -> β1), as
  the paper writes them; `->` and `<-` print as arrows. Nothing else changes, so a label is
  still the spec's own text;
- `compact` labels cut a long expression at a token boundary and end it with `…`; `full`
  labels wrap it over several lines (continuations indented) and never drop anything;
- `html` escapes text for graphviz's HTML-like labels.
"""
from __future__ import annotations

import re

GREEK = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "eps": "ε",
    "zeta": "ζ", "eta": "η", "theta": "θ", "lambda": "λ", "mu": "μ", "nu": "ν", "rho": "ρ",
    "sigma": "σ", "tau": "τ", "phi": "φ", "psi": "ψ", "omega": "ω",
}
_IDENTIFIER = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*)\b")
_GREEK_NAME = re.compile(r"^(" + "|".join(sorted(GREEK, key=len, reverse=True)) + r")(\d*)$")
CONTINUATION = "    "


def greek(name: str) -> str:
    """`eta` -> `η`, `beta1` -> `β1`; any other identifier unchanged."""
    match = _GREEK_NAME.match(name)
    return GREEK[match.group(1)] + match.group(2) if match else name


def pretty(text: str) -> str:
    """Greek letters for Greek names, arrows for `->` and `<-` (strings are never touched)."""
    parts = re.split(r'("[^"]*")', text)
    for i in range(0, len(parts), 2):
        part = _IDENTIFIER.sub(lambda m: greek(m.group(1)), parts[i])
        parts[i] = part.replace("->", "→").replace("<-", "←")
    return "".join(parts)


def _break_points(text: str) -> list[int]:
    """Indices just after a space: where a line may be broken without splitting a token."""
    return [i + 1 for i, char in enumerate(text) if char == " "]


def truncate(text: str, width: int) -> str:
    """`text` if it fits in `width` characters, else cut at a space and ended with `…`."""
    if len(text) <= width:
        return text
    cuts = [i for i in _break_points(text) if i <= width - 1]
    cut = cuts[-1] if cuts and cuts[-1] > width // 2 else width - 1
    return text[:cut].rstrip() + "…"


def wrap(text: str, width: int) -> list[str]:
    """`text` over as many lines as it needs, broken at spaces; continuations are indented."""
    lines: list[str] = []
    rest, limit = text, width
    while len(rest) > limit:
        cuts = [i for i in _break_points(rest) if i <= limit]
        cut = cuts[-1] if cuts and cuts[-1] > limit // 3 else limit
        lines.append(rest[:cut].rstrip())
        rest, limit = rest[cut:].lstrip(), width - len(CONTINUATION)
    lines.append(rest)
    return [lines[0]] + [CONTINUATION + line for line in lines[1:]]


def fit(text: str, width: int, full: bool, compact_lines: int = 2) -> list[str]:
    """All wrapped lines (full), or at most `compact_lines` of them, the last cut with `…`."""
    lines = wrap(text, width)
    if full or len(lines) <= compact_lines:
        return lines
    rest = " ".join(line.strip() for line in lines[compact_lines - 1:])
    if compact_lines == 1:
        return [truncate(rest, width)]
    return lines[:compact_lines - 1] + [CONTINUATION + truncate(rest, width - len(CONTINUATION))]


def html(text: str) -> str:
    """Escape for a graphviz HTML-like label."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
