"""Validation: run every check over a built spec and report all problems at once.

`validate(graph, source)` returns the graph unchanged when it is valid and raises
`NLDSLValidationError` listing every problem (sorted by position) otherwise.
"""
from __future__ import annotations

from nldsl.validation.common import Checker
from nldsl.validation.levels import check_frequencies, check_learned_inits, check_objectives, \
    check_once
from nldsl.validation.memories import check_channel_gates, check_mlp_algebra
from nldsl.validation.names import check_definition_cycles, check_duplicates, check_references
from nldsl.validation.shapes import check_shapes
from nldsl.validation.values import check_constants, check_hparams, check_rules
from nldsl.validation.vocabulary import check_grad_args, check_mlp_options, check_period_calls, \
    check_vocabulary
from nldsl.errors import NLDSLValidationError, Problem, Source
from nldsl.graph import LevelGraph

CHECKS = (
    check_duplicates,
    check_references,
    check_definition_cycles,
    check_vocabulary,
    check_period_calls,
    check_grad_args,
    check_mlp_options,
    check_hparams,
    check_constants,
    check_rules,
    check_frequencies,
    check_learned_inits,
    check_once,
    check_objectives,
    check_shapes,
    check_mlp_algebra,
    check_channel_gates,
)


def problems(graph: LevelGraph, source: Source) -> list[Problem]:
    """Every problem in the spec, in source order, without duplicates."""
    checker = Checker(graph, source)
    for check in CHECKS:
        check(checker)
    unique = {(p.line, p.col, p.message): p for p in checker.problems}
    return sorted(unique.values(), key=lambda p: (p.line, p.col))


def validate(graph: LevelGraph, source: Source) -> LevelGraph:
    found = problems(graph, source)
    if found:
        raise NLDSLValidationError(found)
    return graph
