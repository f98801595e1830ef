"""Which fast form each level of a module takes in the chunked schedule, and the order and cuts
the schedule runs them in: decided from the Program alone (no torch), at construction; the
forms themselves are recognised by structure (forms.py, deep_forms.py, derived_forms.py,
periodic_forms.py, snapshot_forms.py, chain_forms.py, task.py)."""
from __future__ import annotations

from nldsl.language.consteval import calls_in, names_in
from nldsl.lower.chain_forms import ChainForm, chain_form
from nldsl.lower.deep_forms import DeepForm, deep_form
from nldsl.lower.derived_forms import DerivedForm, derived_form
from nldsl.lower.forms import LinearForm, linear_form
from nldsl.lower.periodic_forms import PeriodicForm, periodic_form
from nldsl.lower.program import Program, TokenLevel
from nldsl.lower.snapshot_forms import SnapshotForm, snapshot_form
from nldsl.lower.task import FrozenForm, frozen_form
from nldsl.lower.timing import snapshot_reads, states_through

#: The form of a level with no states (an attention level): its contexts and reads are
#: evaluated over the whole call when something uses them.
STATELESS = "stateless"


def plan_schedule(program: Program) -> dict[str, LinearForm | DeepForm | DerivedForm |
                                             PeriodicForm | SnapshotForm | ChainForm |
                                             FrozenForm | str]:
    """level -> its fast form (a linear memory; a deep memory's chunk form, read through a
    derived memory, or as a chain with Newton-Schulz; the periodic form of a `once` level; the
    snapshot form of a chunk whose values all see its start; the frozen form of a level that
    learns from the task loss; or stateless), for every level; {} when one level has none.
    Contexts may use the before-write reads of deep levels (`snapshot_reads`): the call then
    runs one chunk of those levels at a time (`segment_chunks`), where such a read is the
    chunk-start state's."""
    leaves = snapshot_reads(program.levels)
    forms = {level.name: stateless_form(level, program, leaves) or linear_form(level, program)
             or deep_form(level, program, leaves) or derived_form(level, program, leaves)
             or periodic_form(level, program, leaves)
             or snapshot_form(level, program) or chain_form(level, program)
             or frozen_form(level)
             for level in program.levels}
    return forms if all(forms.values()) else {}


def stateless_form(level: TokenLevel, program: Program, leaves=frozenset()) -> str | None:
    """A level without states or writes whose contexts use no fast state but the `leaves`
    (they are evaluated over the whole call where something uses them) and no `period_mean`
    over a period longer than a token (the chunked evaluator's is the identity)."""
    if level.states or level.writes or level.hidden or uses_period_mean(level) or any(
            states_through(value, program.levels, program.outer_contexts, leaves)[0]
            for value in level.contexts.values()):
        return None
    return STATELESS


def segment_chunks(program: Program) -> set[int]:
    """The chunks of the deep levels whose before-write reads some context uses: a call is cut
    at their boundaries."""
    leaves = snapshot_reads(program.levels)
    used = set()
    for level in program.levels:
        for value in level.contexts.values():
            used |= states_through(value, program.levels, program.outer_contexts, leaves)[1]
    return {program.owner(name).chunk for name in used}


def run_order(program: Program) -> list[TokenLevel]:
    """The levels in update order, except that a level runs after the levels whose contexts it
    names: over a whole call a level's contexts are sequences only once its level has run (the
    snapshot form computes them chunk by chunk, at its states)."""
    owner = {name: level.name for level in program.levels for name in level.contexts}
    needs = {level.name: {owner[n.id] for e in _expressions(level) for n in names_in(e)
                          if n.id in owner and owner[n.id] != level.name}
             for level in program.levels}
    order, done = [], set()
    while len(order) < len(program.levels):
        ready = [lv for lv in program.levels if lv.name not in done and needs[lv.name] <= done]
        level = ready[0] if ready else next(lv for lv in program.levels if lv.name not in done)
        order.append(level)
        done.add(level.name)
    return order


def _expressions(level: TokenLevel) -> list:
    return list(level.contexts.values()) + [r for r, _ in level.reads.values()] + [
        e for w in level.writes for e in (w.loss, w.grad, w.value, w.lr, w.decay, w.beta,
                                          w.precondition, w.clip) if e is not None]


def uses_period_mean(level: TokenLevel) -> bool:
    """Whether a context of a level writing every N > 1 tokens averages over its period."""
    return level.period != 1 and any(call.func == "period_mean" for value in
                                     level.contexts.values() for call in calls_in(value))
