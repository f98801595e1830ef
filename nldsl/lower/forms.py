"""Recognise a level's update as the linear-memory form, by structure, never by spec name.

The form (one matrix memory M [d_v, d_k] per head, written every token):

    M_t = a_t M_{t-1} - c_t (M_{t-1} k_t) k_t^T + w_t k_t^T,      a_t, c_t scalars per head

covers linear attention (c = 0: Hebbian, NL eqs. 16, 64), DeltaNet (a = 1, c = beta,
w = beta v: eq. 65), the gated delta rule of Miras/Titans-without-momentum (a = alpha,
c = beta), Gated DeltaNet (a = alpha, c = alpha beta, w = beta v) and DGD (c = lr',
eq. 57). The update is decomposed as a sum of terms linear in M: `coef * M`,
`coef * outer(M k, k')`, `outer(w, k')` (and `M @ k` for `M(k)`); all keys must be one
expression. Reads must use M only as `M(q)` / `M @ q`; those become placeholder names that
the chunked schedule binds to the computed outputs.
"""
from __future__ import annotations

from dataclasses import dataclass

from nldsl.language import ast
from nldsl.language.builtins import shaped
from nldsl.lower.derive import binary, mentions, negate, num
from nldsl.lower.program import Program, TokenLevel


class NoForm(Exception):
    """The expression is not of the form."""


@dataclass(frozen=True)
class LinearForm:
    state: str
    decay: ast.Expr                # a
    erase: ast.Expr                # c (0 for a Hebbian memory)
    key: ast.Expr                  # k
    write: ast.Expr                # w
    queries: dict[str, tuple[ast.Expr, bool]]   # placeholder -> (q, before_write)
    reads: dict[str, ast.Expr]     # read name -> its expression with placeholders


def placeholder(state: str, index: int) -> str:
    """A name no spec can write (it has '@'), bound to the i-th `M(q)` of the reads."""
    return f"{state}@{index}"


def linear_form(level: TokenLevel, program: Program) -> LinearForm | None:
    """The level's form, or None. A `chunk C > 1` level is never the form: the reference keeps
    its chunk-start state, which its `before write` reads see and its state carries between
    calls (docs/language.md, "Frequency and chunk semantics"), and the block form computes
    neither (tests/test_fuzz_module.py found both differences). A clipped write (`clip = c`)
    is not linear in the state: the reference runs it."""
    if level.period != 1 or level.chunk > 1 or level.hidden or len(level.states) != 1 or \
            len(level.writes) != 1 or level.writes[0].chain or level.window > 1:
        return None
    (state,) = level.states.values()
    write = level.writes[0]
    if len(state.shape) != 2 or write.target != state.name:
        return None
    s = state.name
    fast = {n for lv in program.levels for n in list(lv.states) + list(lv.reads) + list(lv.hidden)}
    if any(mentions(value, n) for value in level.contexts.values() for n in fast) or \
            any(level.placements[c].states for c in level.contexts if c in level.placements):
        return None                        # directly, or through other levels' contexts
    if write.kind == "explicit":
        value = write.value
    elif write.kind == "gradient" and write.grad is not None and write.precondition is None and \
            write.clip is None:
        value = binary("-", binary("*", write.decay, ast.Name(id=s)), binary("*", write.lr, write.grad))
    else:
        return None
    try:
        terms = _terms(value, s)
        decay, erase, key, vector = _collect(terms)
        queries, reads = read_queries(level, s)
    except NoForm:
        return None
    factors = [f for term in terms if term[0] == "write" for f in term[3]]
    if not all(one_per_head(f, level, program) for f in factors):
        return None                        # f * outer(v, k) is outer(f v, k) for a scalar f only
    if any(mentions(e, n) for e in (decay, erase, key, vector) for n in fast):
        return None
    if mentions(program.output, s) or any(
            mentions(e, s) for lv in program.levels if lv is not level
            for e in list(lv.contexts.values()) + [r for r, _ in lv.reads.values()]):
        return None
    return LinearForm(s, decay, erase, key, vector, queries, reads)


def _terms(e: ast.Expr, s: str) -> list[tuple]:
    """e as a sum of ("S", coef) | ("Sk", coef, k) | ("erase", coef, k, k') | ("write", w, k')
    | ("free", e) terms."""
    if isinstance(e, ast.Name) and e.id == s:
        return [("S", num(1))]
    if isinstance(e, ast.Unary) and e.op == "-":
        operand = _terms(e.operand, s)
        return [("free", e)] if _is_free(operand) else [_scale(t, num(-1)) for t in operand]
    if isinstance(e, ast.Binary) and e.op in "+-":
        left, right = _terms(e.left, s), _terms(e.right, s)
        if _is_free(left) and _is_free(right):
            return [("free", e)]
        return left + (right if e.op == "+" else [_scale(t, num(-1)) for t in right])
    if isinstance(e, ast.Binary) and e.op in "*/":
        left, right = _terms(e.left, s), _terms(e.right, s)
        if e.op == "/":
            if not _is_free(right):
                raise NoForm(e)
            return [_scale(t, binary("/", num(1), right[0][1])) for t in left]
        if _is_free(left) and _is_free(right):
            return [("free", e)]
        if _is_free(left):
            return [_scale(t, left[0][1]) for t in right]
        if _is_free(right):
            return [_scale(t, right[0][1]) for t in left]
        raise NoForm(e)
    if isinstance(e, ast.Binary) and e.op == "@" and e.left == ast.Name(id=s):
        if mentions(e.right, s):
            raise NoForm(e)
        return [("Sk", num(1), e.right)]
    if isinstance(e, ast.Call) and e.func == s and len(e.args) == 1 and not e.kwargs:
        if mentions(e.args[0], s):
            raise NoForm(e)
        return [("Sk", num(1), e.args[0])]
    if isinstance(e, ast.Call) and e.func == "outer" and len(e.args) == 2 and not e.kwargs:
        key = e.args[1]
        if mentions(key, s):
            raise NoForm(e)
        out = []
        for term in _terms(e.args[0], s):
            if term[0] == "Sk":
                out.append(("erase", term[1], term[2], key))
            elif term[0] == "free":
                out.append(("write", term[1], key, ()))
            else:
                raise NoForm(e)
        return out
    if mentions(e, s):
        raise NoForm(e)
    return [("free", e)]


def _is_free(terms: list[tuple]) -> bool:
    return len(terms) == 1 and terms[0][0] == "free"


def _scale(term: tuple, factor: ast.Expr) -> tuple:
    """factor * term. A write term `outer(w, k)` keeps the factors applied outside the outer:
    they must be one number per head (`linear_form` checks), since a channel-wise gate f
    broadcasts over the key side, f * outer(w, k) = outer(w, f k), not outer(f w, k)."""
    if term[0] == "write":
        return ("write", _times(factor, term[1]), term[2], term[3] + (factor,))
    return (term[0], _times(factor, term[1])) + term[2:]


#: Built-ins one number per head of such numbers (elementwise ones, max, min, clamp), and those
#: one number per head whatever their input (reductions: dot, l2, norm, sum, mean, ...).
_ELEMENTWISE = frozenset(shaped("elementwise", "broadcast"))
_REDUCING = frozenset(shaped("reduce_all", "last_dim_reduce"))


def one_per_head(e: ast.Expr, level: TokenLevel, program: Program) -> bool:
    """Is e surely one number per head (or per token without heads)? Numbers and numeric
    hyper-parameters, reductions, an element `a[i]`, `x @ P` with P's last dim 1 (or the
    level's heads), and elementwise functions, conditionals and arithmetic of such; contexts
    by their definitions. Anything else
    may be channel-wise: not the form (the level runs token by token, with the same values)."""
    if isinstance(e, ast.Number):
        return True
    if isinstance(e, ast.Name):
        if e.id == "t":                                  # the token count
            return True
        if e.id in program.params:
            return program.params[e.id].shape in ((), (1,), (level.heads or 1,))
        if e.id in program.hparams:
            return isinstance(program.hparams[e.id], (int, float))
        owner = program.owner(e.id)
        definition = owner.contexts.get(e.id) if owner is not None else program.outer_contexts.get(e.id)
        return definition is not None and one_per_head(definition, owner or level, program)
    if isinstance(e, ast.Unary):
        return e.op == "-" and one_per_head(e.operand, level, program)
    if isinstance(e, ast.Binary) and e.op == "@":
        param = program.params.get(e.right.id) if isinstance(e.right, ast.Name) else None
        return param is not None and len(param.shape) == 2 and \
            param.shape[-1] in (1, level.heads or 1)
    if isinstance(e, ast.Binary) and e.op in ("+", "-", "*", "/", "**"):
        return one_per_head(e.left, level, program) and one_per_head(e.right, level, program)
    if isinstance(e, ast.Call) and e.func in _REDUCING:
        return True
    if isinstance(e, ast.Call) and e.func in _ELEMENTWISE:
        return all(one_per_head(a, level, program) for a in e.args)
    if isinstance(e, ast.Conditional):
        return all(one_per_head(part, level, program) for part in (e.cond, e.then, e.otherwise))
    return isinstance(e, ast.Index)                     # one element of a vector or a tuple


def _times(factor: ast.Expr, e: ast.Expr) -> ast.Expr:
    """factor * e, with signs pulled out so that the printed coefficients read as written."""
    if isinstance(factor, ast.Number) and factor.value == -1:
        return negate(e)
    if isinstance(factor, ast.Unary) and factor.op == "-":
        return negate(_times(factor.operand, e))
    if isinstance(e, ast.Unary) and e.op == "-":
        return negate(_times(factor, e.operand))
    return binary("*", factor, e)


def _collect(terms: list[tuple]):
    decay, erase, vector, keys = num(0), num(0), num(0), []
    for term in terms:
        if term[0] == "S":
            decay = binary("+", decay, term[1])
        elif term[0] == "erase":
            erase = negate(term[1]) if erase == num(0) else binary("-", erase, term[1])
            keys += [term[2], term[3]]
        elif term[0] == "write":
            vector = binary("+", vector, term[1])
            keys.append(term[2])
        else:
            raise NoForm(term)
    if not keys or any(k != keys[0] for k in keys):
        raise NoForm(keys)
    return decay, erase, keys[0], vector


def read_queries(level: TokenLevel, s: str):
    """The level's reads with each application `s(q)` / `s @ q` replaced by a placeholder name,
    and placeholder -> (q, before_write); NoForm when a read uses s otherwise."""
    queries: dict[str, tuple[ast.Expr, bool]] = {}
    reads = {}
    for name, (value, before) in level.reads.items():
        reads[name] = replace_applications(value, s, before, queries)
        if mentions(reads[name], s):
            raise NoForm(value)
    return queries, reads


def replace_applications(e, s: str, before: bool, queries: dict):
    query = None
    if isinstance(e, ast.Call) and e.func == s and len(e.args) == 1:
        query = e.args[0]
    elif isinstance(e, ast.Binary) and e.op == "@" and e.left == ast.Name(id=s):
        query = e.right
    if query is not None and not mentions(query, s):
        name = placeholder(s, len(queries))
        queries[name] = (query, before)
        return ast.Name(id=name)
    if not isinstance(e, ast.Node):
        return e
    updates = {}
    for field, value in e:
        if isinstance(value, ast.Node):
            updates[field] = replace_applications(value, s, before, queries)
        elif isinstance(value, list):
            updates[field] = [replace_applications(v, s, before, queries)
                              if isinstance(v, ast.Node) else v for v in value]
    return e.model_copy(update=updates) if updates else e
