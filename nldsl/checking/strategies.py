"""Hypothesis strategies drawn from a spec: its hyper-parameters inside their declared ranges,
the tensors of one unit, and input streams.

    hparams(spec)           {name: value} inside every declared constraint (ast.Bound, Interval,
                            Choice; `validation/values.py's satisfies` decides)
    tensors_for(spec, lvl)  a `Unit`: hyper-parameters, a seed for the tensors, a step or token
    streams(spec)           a `Stream`: hyper-parameters, batch, length, block size, seed

Sizes stay small so a property runs in milliseconds: a hyper-parameter that sizes a state or
a head count (a *dimension*: `dim`, `heads`, `head_dim`) is drawn from 2-4 (inside its range; not 1,
since a per-head width of 1 reads as one scalar per head, docs/language.md "Heads");
other ints from an 8-wide window from their lower bound. A float is drawn from its declared
interval; where a side is open-ended, from the default's neighbourhood (up to twice its
distance from the bound, or +-10 % around a default with no bound at all: a spec that declares
no range says nothing about other values; a tuple with no range, such as polynomial
coefficients tuned together, is held at its default). Bools are drawn, strings from their
`{...}` choice.
"""
from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from nldsl.language import ast
from nldsl.validation.values import describe, satisfies, unknown_hparams
from nldsl.language.consteval import hparam_values, names_in, try_evaluate
from nldsl.errors import NLDSLValueError

MAX_DIM = 4


def spec_of(spec):
    """A Spec from a Spec, a stdlib name, a path or spec text."""
    from nldsl.spec import Spec, load

    return spec if isinstance(spec, Spec) else load(spec)


def dimensions(spec) -> set[str]:
    """Hyper-parameters that size a state or count heads (plus a module's `dim`)."""
    found = {"dim"} if spec.kind == "module" else set()
    for level in spec.graph.levels.values():
        exprs = [level.heads] if level.heads is not None else []
        for state in level.states.values():
            shape = state.decl.shape
            exprs += getattr(shape, "dims", []) + getattr(shape, "widths", [])
        found |= {n.id for e in exprs for n in names_in(e)}
    return found & {h.name for h in spec.decl.hparams}


def _bounds(hparam: ast.HParam, env: dict):
    """(low, low_closed, high, high_closed, exact): the interval its constraints state."""
    low, high, low_closed, high_closed, exact = None, None, True, True, None
    for c in hparam.constraints:
        if isinstance(c, ast.Bound):
            value = try_evaluate(c.value, env)
            if value is None or isinstance(value, (bool, str, tuple)):
                continue
            if c.op in (">", ">="):
                low, low_closed = value, c.op == ">="
            elif c.op in ("<", "<="):
                high, high_closed = value, c.op == "<="
            elif c.op == "==":
                exact = value
        elif isinstance(c, ast.Interval):
            lo, hi = try_evaluate(c.low, env), try_evaluate(c.high, env)
            if lo is not None:
                low, low_closed = lo, c.low_closed
            if hi is not None:
                high, high_closed = hi, c.high_closed
    return low, low_closed, high, high_closed, exact


def _number(hparam, default, env, is_dim: bool):
    low, low_closed, high, high_closed, exact = _bounds(hparam, env)
    if exact is not None:
        return st.just(exact)
    integer = hparam.type == "int" or (hparam.type is None and isinstance(default, int)) or \
        (default is None and is_dim)
    if integer:
        lo = 1 if low is None and is_dim else (
            (low if low_closed else low + 1) if low is not None else (default or 0) - 2)
        lo = max(int(lo), 2) if is_dim and (high is None or high >= 2) else int(lo)
        hi = max(lo, MAX_DIM) if is_dim else lo + 7
        if high is not None:
            hi = min(hi, int(high if high_closed else high - 1))
        return st.integers(lo, max(lo, hi))
    if low is None and high is None:
        centre = float(default or 0.0)
        span = 0.1 * max(abs(centre), 1.0)
        low, high = centre - span, centre + span
    elif high is None:
        high = low + (2 * (default - low) if default is not None and default > low else 1.0)
    elif low is None:
        low = high - (2 * (high - default) if default is not None and default < high else 1.0)
    return st.floats(float(low), float(high), exclude_min=not low_closed, exclude_max=not high_closed,
                     allow_nan=False, allow_infinity=False)


def _value(hparam: ast.HParam, default, env: dict, is_dim: bool):
    choices = [c for c in hparam.constraints if isinstance(c, ast.Choice)]
    if choices:
        return st.sampled_from([try_evaluate(o, env) for o in choices[0].options])
    if hparam.type == "bool" or isinstance(default, bool):
        return st.booleans()
    if hparam.type == "str" or isinstance(default, str):
        return st.just(default)
    if isinstance(default, tuple):
        if not hparam.constraints:          # coefficients tuned together: held at the default
            return st.just(default)
        return st.tuples(*[_number(hparam, d, env, is_dim) for d in default])
    return _number(hparam, default, env, is_dim)


def hparams(spec, fixed: dict | None = None) -> st.SearchStrategy[dict]:
    """Hyper-parameter values inside the declared ranges (`fixed` ones as given)."""
    spec = spec_of(spec)
    defaults = hparam_values(spec.decl)
    dims = dimensions(spec)
    fixed = fixed or {}
    _check_fixed(spec, fixed, {**defaults, **fixed})
    parts = {h.name: st.just(fixed[h.name]) if h.name in fixed else
             _value(h, defaults.get(h.name), defaults, h.name in dims) for h in spec.decl.hparams}

    def inside(values: dict) -> bool:
        return all(satisfies(values[h.name], c, values) is not False
                   for h in spec.decl.hparams for c in h.constraints)

    return st.fixed_dictionaries(parts).filter(inside)


def _check_fixed(spec, fixed: dict, env: dict) -> None:
    """A held value must name a hyper-parameter and meet its constraints (else no draw could)."""
    unknown = unknown_hparams(spec.decl, fixed, spec.source)
    if unknown:
        raise NLDSLValueError(unknown)
    known = {h.name: h for h in spec.decl.hparams}
    for name, value in fixed.items():
        for c in known[name].constraints:
            if satisfies(value, c, env) is False:
                raise ValueError(f"{spec.name}: {name} = {value!r} is outside its declared range "
                                 f"({describe(c)})")


@dataclass(frozen=True)
class Unit:
    """One unit of a level to check: the hyper-parameters, a parameter of `shape` (optimizers)
    or a batch of `batch` sequences (modules), the step or token index, the tensors' seed."""

    hparams: dict
    level: str | None
    shape: tuple[int, ...]
    batch: int
    step: int
    seed: int


def tensors_for(spec, level: str | None = None, fixed: dict | None = None) -> st.SearchStrategy[Unit]:
    """One unit's inputs: W a [rows, cols] matrix (1-4 each) with its gradient and states, at
    step 1-8 (so `step == 1` branches are taken); for a module, a token at t = 1-8 of 1-2
    sequences with drawn states and parameters. The tensors are standard normal, drawn from
    `seed` by the check, which knows the spec's layout (optimizer_units.compare_writes,
    module_units.compare_writes)."""
    spec = spec_of(spec)
    if level is not None and level not in spec.graph.levels:
        raise ValueError(f"{spec.name} has no level {level!r}; it has {', '.join(spec.graph.levels)}")
    sizes = st.integers(1, MAX_DIM)
    return st.builds(Unit, hparams(spec, fixed), st.just(level), st.tuples(sizes, sizes),
                     st.integers(1, 2), st.integers(1, 8), st.integers(0, 2 ** 16))


@dataclass(frozen=True)
class Stream:
    """A run to compare: hyper-parameters, batch, length (tokens or optimizer steps), the
    fast schedule's block size, where to cut the stream, and the seed of the data."""

    hparams: dict
    batch: int
    length: int
    block_size: int
    cut: int
    seed: int


@st.composite
def streams(draw, spec, fixed: dict | None = None, max_length: int = 12) -> Stream:
    """Lengths 1-max_length, batches 1-2, block sizes 1-8 (dividing the length or not), a cut
    somewhere inside the stream."""
    spec = spec_of(spec)
    values = draw(hparams(spec, fixed))
    length = draw(st.integers(1, max_length))
    return Stream(values, draw(st.integers(1, 2)), length, draw(st.integers(1, 8)),
                  draw(st.integers(0, length)), draw(st.integers(0, 2 ** 16)))
