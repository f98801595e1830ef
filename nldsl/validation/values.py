"""Values: hyper-parameter defaults against their declared types and ranges, constant
learning-rule arguments against the ranges that make sense (a decay in [0, 1], lr >= 0),
constants a tensor cannot hold, and the values a caller passes (`check_hparam_values`), which
must meet the same declarations as a default."""
from __future__ import annotations

import difflib
import numbers
import operator
from typing import Any

from nldsl.language import ast
from nldsl.language.builtins import RULES
from nldsl.validation.common import Checker
from nldsl.validation.shapes import DIM_HINT, declared_states, dim_problems
from nldsl.language.consteval import constant_problems, hparam_values, names_in, shown_value, try_evaluate
from nldsl.errors import NLDSLValueError, Problem, Source
from nldsl.language.printer import format_expr

_OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
        "==": operator.eq, "!=": operator.ne}
_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}
_ARTICLE = {"int": "an", "float": "a", "bool": "a", "str": "a"}

#: Rule arguments that must lie in a range when they are constants: (low, high) inclusive.
RULE_ARG_RANGES = {"lr": (0, None), "decay": (0, 1), "beta": (0, 1), "steps": (1, None),
                   "clip": (0, None)}
#: Rule arguments whose lower bound is excluded.
OPEN_BELOW = {"clip"}


def _leaves(value):
    return [leaf for item in value for leaf in _leaves(item)] if isinstance(value, tuple) else [value]


def _is_nan(value) -> bool:
    return isinstance(value, numbers.Number) and value != value


def satisfies(value, constraint: ast.Constraint, env: dict) -> bool | None:
    """Whether every element of `value` meets `constraint`; None when it cannot be decided."""
    try:
        if not isinstance(constraint, ast.Choice) and any(_is_nan(v) for v in _leaves(value)):
            return False    # NaN compares false to everything, but `!= 0` would let it through
        if isinstance(constraint, ast.Bound):
            bound = try_evaluate(constraint.value, env)
            return None if bound is None else all(_OPS[constraint.op](v, bound) for v in _leaves(value))
        if isinstance(constraint, ast.Interval):
            low, high = try_evaluate(constraint.low, env), try_evaluate(constraint.high, env)
            if low is None or high is None:
                return None
            return all((low <= v if constraint.low_closed else low < v) and
                       (v <= high if constraint.high_closed else v < high) for v in _leaves(value))
        options = [try_evaluate(o, env) for o in constraint.options]
        return value in options
    except TypeError:
        return False


def describe(constraint: ast.Constraint) -> str:
    if isinstance(constraint, ast.Bound):
        return f"{constraint.op} {format_expr(constraint.value)}"
    if isinstance(constraint, ast.Interval):
        return (f"in {'[' if constraint.low_closed else '('}{format_expr(constraint.low)}, "
                f"{format_expr(constraint.high)}{']' if constraint.high_closed else ')'}")
    return "in {" + ", ".join(format_expr(o) for o in constraint.options) + "}"


def check_hparams(c: Checker) -> None:
    """Defaults against their declared types and ranges."""
    env = hparam_values(c.decl)
    for hparam in c.decl.hparams:
        value = env.get(hparam.name)
        if hparam.default is not None and value is None:
            continue
        if value is not None and hparam.type and not (
                isinstance(value, _TYPES[hparam.type]) and not
                (hparam.type != "bool" and isinstance(value, bool))):
            c.report(hparam.default, f"hyper-parameter {hparam.name!r} is declared {hparam.type} "
                     f"but its default is {value!r}", expected=f"{_ARTICLE[hparam.type]} {hparam.type} value",
                     hint="change the default or the declared type")
        for constraint in hparam.constraints:
            if value is not None and satisfies(value, constraint, env) is False:
                c.report(hparam.default, f"the default of {hparam.name!r} ({value!r}) is outside "
                         f"its declared range ({describe(constraint)})",
                         expected=f"a value {describe(constraint)}", hint="fix the default or the range")


def check_constants(c: Checker) -> None:
    """Constants a tensor cannot hold (`10**1000`, a string used as a number), wherever they
    are: compiled, they would raise OverflowError or TypeError at the first step."""
    for bad in constant_problems(c.decl, hparam_values(c.decl)):
        c.report(bad.node, bad.message, expected=bad.expected, hint=bad.hint)


def check_rules(c: Checker) -> None:
    env = hparam_values(c.decl)
    for level in c.graph.levels.values():
        for objective in level.objectives:
            for rule in objective.rules:
                _check_rule(c, rule, env)


def _check_rule(c: Checker, rule: ast.Rule, env: dict) -> None:
    spec = RULES.get(rule.name)
    if spec is None:
        c.report(rule, f"unknown learning rule {rule.name!r}",
                 expected=f"one of: {', '.join(RULES)}", hint=c.suggest(rule.name, RULES) or
                 "learning rules are built in; an optimizer spec such as `adam` is not a rule")
        return
    if len(rule.args) > len(spec.params):
        c.report(rule, f"{rule.name}() takes at most {len(spec.params)} arguments, got "
                 f"{len(rule.args)}", expected=f"{rule.name}({', '.join(spec.params)})",
                 hint=spec.doc)
    bound = dict(zip(spec.params, rule.args))
    for keyword in rule.kwargs:
        if keyword.name not in spec.params:
            c.report(keyword, f"{rule.name}() has no argument {keyword.name!r}",
                     expected=f"one of: {', '.join(spec.params) or '(none)'}",
                     hint=c.suggest(keyword.name, spec.params) or spec.doc)
        elif keyword.name in bound:
            c.report(keyword, f"{rule.name}() got {keyword.name!r} twice",
                     expected="each argument once", hint="remove the positional or the keyword one")
        bound[keyword.name] = keyword.value
    missing = [p for p in spec.params if p not in bound and p not in spec.defaults]
    if missing:
        c.report(rule, f"{rule.name}() is missing {', '.join(map(repr, missing))}",
                 expected=f"{rule.name}({', '.join(spec.params)})", hint=spec.doc)
    for name, expr in bound.items():
        if name not in RULE_ARG_RANGES:
            continue
        value = try_evaluate(expr, env)
        low, high = RULE_ARG_RANGES[name]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (
                (low is not None and (value < low or value == low and name in OPEN_BELOW)) or
                (high is not None and value > high)):
            what = {"lr": "a negative learning rate", "steps": "a step count below 1",
                    "clip": "a gradient-norm bound that is not positive"}.get(
                name, f"a {name} outside [0, 1]")
            c.report(expr, f"{what}: {name} = {value!r}",
                     expected=f"{name} {'>' if name in OPEN_BELOW else '>='} {low}" if high is None
                     else f"{name} in [{low}, {high}]",
                     hint={"lr": "a negative learning rate ascends the objective; flip the "
                                 "objective's sign instead",
                           "clip": "clip = c bounds each unit's gradient norm by c > 0"}.get(
                               name, "gates and decays are "
                           "fractions: 1 keeps everything, 0 forgets everything"))


# ---------------------------------------------------------------- values a caller passes

_CLAUSES = (("every", "a level's period", "every {} {unit}s"), ("chunk", "chunk", "chunk {}"),
            ("heads", "heads", "heads {}"))


def check_hparam_values(spec_or_decl, values: dict[str, Any], source: Source | None = None) -> None:
    """Raise NLDSLValueError (a ValueError, as torch raises for a bad lr) listing every name in
    `values` the spec does not declare (`unknown_hparams`), every value that breaks its
    hyper-parameter's declared type or range, and every period, chunk, head count or state dim
    the values make something other than a positive integer."""
    checker = ValueChecker(spec_or_decl, source)
    problems = unknown_hparams(checker.decl, values, checker.source)
    problems += checker.problems({k: v for k, v in values.items() if k in checker.hparams})
    if problems:
        raise NLDSLValueError(sorted(problems, key=lambda p: (p.line, p.col)))


def unknown_hparams(decl: ast.SpecDecl, names, source: Source | None = None) -> list[Problem]:
    """A problem at the spec's declaration for each of `names` it declares no hyper-parameter
    of: the one wording of this mistake, for nldsl.optimizer, nldsl.compile and the property
    checks' held values alike."""
    known = [h.name for h in decl.hparams]
    listed = (f"a hyper-parameter of {decl.name}: {', '.join(known)}" if known else
              f"no keyword: {decl.name} declares no hyper-parameters")
    problems = []
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else \
                f"pass one of the names in `{decl.name}(...)`"
            span = decl.span
            problems.append(Problem(f"{decl.name} has no hyper-parameter {name!r}", span.line or 1,
                                    span.col or 1, span.end_line or None, span.end_col or None,
                                    listed, hint, source))
    return problems


class ValueChecker:
    """`check_hparam_values` for one spec, with what does not depend on the values (defaults,
    kinds, which clauses and dims use which names) worked out once: an optimizer checks its
    groups' values at every step, and a scheduler changes lr at every step."""

    def __init__(self, spec_or_decl, source: Source | None = None):
        self.decl = decl = getattr(spec_or_decl, "decl", spec_or_decl)
        self.source = source or getattr(spec_or_decl, "source", None)
        self.defaults = hparam_values(decl)
        self.kinds = {h.name: _kind(h, self.defaults) for h in decl.hparams}
        self.hparams = {h.name: h for h in decl.hparams}
        self.clauses = [(level, what, example, getattr(level, field))
                        for level in decl.levels for field, what, example in _CLAUSES
                        if getattr(level, field) is not None]
        self.clause_names = [{n.id for n in names_in(expr)} for *_, expr in self.clauses]
        used = set().union(*self.clause_names)
        self.dim_names = {n.id for state in declared_states(decl) for n in names_in(state.shape)}
        self.derived_names = used | self.dim_names
        self.default_names = {h.name: {n.id for n in names_in(h.default)} for h in decl.hparams
                              if h.default is not None and names_in(h.default)}
        self.computed_defaults = bool(self.default_names)
        self.range_names = {h.name: {n.id for c in h.constraints for n in names_in(c)}
                            for h in decl.hparams}

    def _env(self, values: dict[str, Any]) -> dict[str, Any]:
        """Every hyper-parameter's value under `values`: defaults that use no other
        hyper-parameter need no re-evaluation."""
        if self.computed_defaults:
            return hparam_values(self.decl, values)
        return {**self.defaults, **values}

    def problems(self, values: dict[str, Any], changed: set[str] | None = None) -> list[Problem]:
        """Every problem with `values` (names the spec declares), each at the declaration it
        breaks; clauses and dims are checked only where they use a value that is itself good.
        With `changed`, the other values are known good and only what the changed ones can
        break is checked (a scheduler's new lr costs one range check)."""
        env = self._env(values)
        found, bad = [], set()
        for name, value in values.items():
            if name in self.hparams and (changed is None or name in changed or
                                         self.range_names[name] & changed):
                problems = self._value_problems(self.hparams[name], value, env)
                found += problems
                bad |= {name} if problems else set()
        good = {n for n in values if n in self.hparams and (changed is None or n in changed)} - bad
        for name, uses in self.default_names.items():     # `h = d * 2 <= 8` with d = 5 passed
            if name not in values and name in env and uses & good:
                found += self._value_problems(self.hparams[name], env[name], env,
                                              _from(self.hparams[name].default, values))
        if good & self.derived_names:
            found += self._clause_problems(env, good, values)
            found += [self._at(node, f"{self.decl.name}: {message}{_from(node, values)}",
                               "an integer >= 1", DIM_HINT)
                      for node, message in dim_problems(self.decl, env, good & self.dim_names)]
        if any(self.kinds[n] is None and isinstance(values[n], (str, tuple, list)) for n in good):
            found += [self._at(b.node, f"{self.decl.name}: {b.message}", b.expected, b.hint)
                      for b in constant_problems(self.decl, env)]
        return sorted(found, key=lambda p: (p.line, p.col))

    def _at(self, node: ast.Node, message: str, expected: str, hint: str) -> Problem:
        span = node.span
        return Problem(message, span.line or 1, span.col or 1, span.end_line or None,
                       span.end_col or None, expected, hint, self.source)

    def _value_problems(self, hparam: ast.HParam, value, env: dict, cause: str = "") -> list[Problem]:
        """The problems of one value; `cause` names the passed values a computed default used."""
        decl, name, kind = self.decl, hparam.name, self.kinds[hparam.name]
        if kind is not None and not _fits(kind, value):
            like = f" (its default is {shown_value(self.defaults[name])})" if name in self.defaults else ""
            declared = f" (declared `{name}: {hparam.type}`)" if hparam.type else like
            example = f", e.g. {name}={shown_value(self.defaults[name])}" if name in self.defaults else ""
            return [self._at(hparam, f"{decl.name}: {name} = {_shown_passed(value)} is not "
                             f"{_kind_text(kind)}{declared}", _kind_text(kind),
                             f"pass {name}= {_kind_text(kind)}{example}")]
        checked = _comparable(value)
        problems = []
        for constraint in hparam.constraints if checked is not None else ():
            if satisfies(checked, constraint, env) is not False:
                continue
            shown = _shown_passed(value) + cause
            if isinstance(constraint, ast.Choice):
                options = [try_evaluate(o, env) for o in constraint.options]
                problems.append(self._at(constraint, f"{decl.name}: {name} = {shown} is not one "
                                         f"of {options}", " or ".join(map(shown_value, options)),
                                         f"pass {name}= one of the choices"))
            else:
                problems.append(self._at(constraint, f"{decl.name}: {name} = {shown} is outside "
                                         f"its declared range ({describe(constraint)})",
                                         f"a value {describe(constraint)}",
                                         f"pass {name}= a value {describe(constraint)}, or change "
                                         "the range in the spec if the value is meant"))
        return problems

    def _clause_problems(self, env: dict, good: set[str], values: dict) -> list[Problem]:
        """A level's `every`, `chunk` or `heads` clause that the passed values make something
        other than a positive integer (`every n steps` with n = 0 would divide by zero, n = 2.7
        would act as 2). Clauses that use no passed value were checked with the defaults."""
        problems = []
        for (level, what, example, expr), names in zip(self.clauses, self.clause_names):
            if not names & good:
                continue
            value = try_evaluate(expr, env)
            if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1:
                continue
            clause = example.format(format_expr(expr), unit=level.unit)
            problems.append(self._at(expr, f"{self.decl.name}: {what} (`{clause}` in level "
                                     f"{level.name!r}) must be a positive integer, got "
                                     f"{shown_value(value)}{_from(expr, values)}", "an integer >= 1",
                                     f"e.g. `{example.format(4, unit=level.unit)}`"))
        return problems


def _from(node: ast.Node, values: dict[str, Any]) -> str:
    """` (from n = -1)`: the passed values an expression uses, so the message names the cause."""
    used = dict.fromkeys(n.id for n in names_in(node) if n.id in values)
    return f" (from {', '.join(f'{n} = {shown_value(values[n])}' for n in used)})" if used else ""


def _kind(hparam: ast.HParam, defaults: dict[str, Any]):
    """What a value of `hparam` must be: its declared type, else its default's kind ("number"
    for an int or float default: sgd's `momentum = 0` takes 0.9), a tuple of kinds for a tuple
    default; None when neither says."""
    if hparam.type:
        return hparam.type
    return _kind_of(defaults[hparam.name]) if hparam.name in defaults else None


def _kind_of(value):
    if isinstance(value, tuple):
        return tuple(_kind_of(v) for v in value)
    if isinstance(value, bool):
        return "bool"
    return "str" if isinstance(value, str) else "number"


_KIND_TEXT = {"int": "an int", "float": "a number", "number": "a number", "bool": "a bool",
              "str": "a string"}


def _kind_text(kind) -> str:
    if not isinstance(kind, tuple):
        return _KIND_TEXT[kind]
    return f"a tuple of {len(kind)} {'numbers' if set(kind) == {'number'} else 'items'}"


def _fits(kind, value) -> bool:
    """Whether `value` is of `kind`. A bool is no number (`lr=True` is a mistake, though Python
    counts it as 1); a one-element tensor is a number (torch's optimizers take `lr=tensor(..)`);
    a list stands for a tuple (torch takes `betas=[0.9, 0.99]`)."""
    if isinstance(kind, tuple):
        return isinstance(value, (tuple, list)) and len(value) == len(kind) and \
            all(_fits(k, v) for k, v in zip(kind, value))
    if kind in ("bool", "str"):
        return isinstance(value, bool if kind == "bool" else str)
    if isinstance(value, bool):
        return False
    if kind == "int":
        return isinstance(value, numbers.Integral)
    return isinstance(value, numbers.Real) or _is_scalar_tensor(value)


def _is_scalar_tensor(value) -> bool:
    numel = getattr(value, "numel", None)
    return callable(numel) and hasattr(value, "item") and numel() == 1


def _comparable(value):
    """The value the declared range is checked against: a list as the tuple it stands for, a
    CPU tensor as its number; None for a tensor on a device (reading it would synchronise)."""
    if isinstance(value, list):
        return tuple(_comparable(v) for v in value)
    if _is_scalar_tensor(value):
        device = getattr(getattr(value, "device", None), "type", "cpu")
        return float(value.item()) if device == "cpu" else None
    return value


def _shown_passed(value) -> str:
    if _is_scalar_tensor(value) and _comparable(value) is not None:
        return f"tensor({_comparable(value)!r})"
    return shown_value(value)


