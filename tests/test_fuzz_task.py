"""Differential fuzzing of the task driver (nldsl/module/task.py, docs/modules.md "Levels that
learn from the task loss"): a spec drawn by `nldsl.fuzzing_task.task_specs` either compiles and,
under `nldsl.stream` with a squared loss L_t = 1/2 ||H y_t - z_t||^2, gives the same outputs,
final states and outer gradients in the `reference` and `chunked` schedules, or is refused with
a located `NLDSLError` by `nldsl.load` or `nldsl.compile`. Besides: a stream cut into up to
three calls at random tokens (inside a period too: the pending sums travel in the state; an
empty call too) computes what one call does, and learn=False is the plain forward, bit for bit
(the same call). Never another exception, never a hang (HANG_LIMIT_S per example). The chunked
module must run every level in a fast form (`fast_paths`: task levels frozen, a Hope-style
self-modifying level in the snapshot form, a Hebbian one in the block form), or the comparison
would be the token loop against itself.

Numbers: float64, the chunked module given the reference's parameters, inputs of unit norm
per token, a head H of norm about 1. The two schedules compute the same real function with
sums associated differently (the frozen form's batched GEMMs against the reference's per-token
products; a cut changes where the segments' sums are taken): each value within (width + 3) u
of its terms' magnitude (Higham's gamma_n, width <= 2 * dim + 3 the longest inner product). A
write theta <- theta + sum_t (decay - 1) theta - lr G_t moves theta by a map whose Jacobian has
norm <= 1 + C lr ||H||^2 ||u||^2 (C <= 5 tokens, lr <= 0.05, u the block's input, of norm O(1)),
below 2, so the error of everything written later is at most doubled by each write: T tokens,
at most T writes, give 2^T (width + 3) u; times 4 for the elementwise ops around the products,
times 2 for two evaluations, and times 2 again for outer gradients (a backward pass through the
same writes). T <= 12 keeps it below 1e-10, while a driver bug (a write at the wrong token, a
gradient taken at the wrong state, a dropped decay) changes values by lr * |G|, 1e-3 or more.
"""
from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings, strategies as st

import nldsl
import nldsl.module.module  # noqa: F401  imported here, not inside the first example's hang guard
from _module_cases import U64, assert_close, flat_layers, randomize
from nldsl.fuzzing_task import downstream_task_specs, snapshot_specs, task_specs
from nldsl.fuzzing_task_mix import KINDS
from nldsl.testing import assert_located, hang_guard, loaded_or_refused

from test_module_deep_memories import deep_bound
from test_module_snapshot_chunk import STOPGRAD_FIRST

HANG_LIMIT_S = 30
DIM, OUT = 3, 2
WIDTH = 2 * DIM + 3                  # the widest inner product: an mlp's hidden layer, plus norms

#: about 12 s (task) and 16 s (snapshot) of CPU for the drawn examples, far more run once
#: locally (a few hundred of each) to find the FOUND cases below.
FUZZ_TASK = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FUZZ_SNAPSHOT = settings(FUZZ_TASK, max_examples=30)
FUZZ_DOWNSTREAM = settings(FUZZ_TASK, max_examples=15)             # per kind


def tolerance(steps: int, passes: int = 1) -> float:
    """The module docstring's bound for a stream of `steps` tokens."""
    return 2 * 4 * passes * 2 ** steps * (WIDTH + 3) * U64


def compiled(spec, schedule: str):
    """A float64 module with O(1) parameters, or the located error that refuses the spec."""
    torch.manual_seed(0)
    try:
        return randomize(nldsl.compile(spec, schedule=schedule, dim=DIM).to(torch.float64), 1)
    except nldsl.NLDSLError as err:
        assert_located(err)
        return None


def data(batch: int, steps: int, seed: int):
    """Inputs of unit norm per token, targets, and the squared loss of a head H."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, DIM, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=-1, keepdim=True)
    z = torch.randn(batch, steps, OUT, generator=g, dtype=torch.float64)
    H = torch.randn(OUT, DIM, generator=g, dtype=torch.float64) / math.sqrt(DIM)
    return x, z, lambda y, target: 0.5 * ((y @ H.T - target) ** 2).sum()


def tensors(state: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in flat_layers(state).items() if isinstance(v, torch.Tensor)}


def assert_states_close(got: dict, want: dict, bound: float, what: str) -> None:
    got_flat, want_flat = flat_layers(got), flat_layers(want)
    assert got_flat.keys() == want_flat.keys(), (what, sorted(got_flat), sorted(want_flat))
    for key, value in want_flat.items():
        if isinstance(value, torch.Tensor):
            assert_close(got_flat[key].detach(), value.detach(), bound, f"{what} {key}")
        else:
            assert got_flat[key] == value, f"{what} {key}: {got_flat[key]!r} != {value!r}"


def assert_gradients_close(got: list, want: list, names: list, bound: float) -> None:
    """Every gradient within `bound` of the magnitude of its terms: products of the backward
    pass's seed (the outer loss's weights, up to 1 in magnitude) with O(1) activations, so at
    least 1, or the largest gradient if that is larger. Not each gradient's own magnitude: one
    that cancels to about 0 (d/dWk through an l2norm'd key, whose norm is constant; everything
    read through a zero memory) keeps the rounding of its terms."""
    assert len(got) == len(want) == len(names)
    scale = max([1.0] + [w.abs().max().item() for w in want if w.numel()])
    for name, a, b in zip(names, got, want):
        assert a.shape == b.shape, f"grad {name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        error = (a - b).abs().max().item() if b.numel() else 0.0
        assert error <= bound * max(scale, 1e-300), \
            f"grad {name}: max error {error:.3e} > {bound:.3e} x scale {scale:.3e}"


def outer_gradients(m, y, state) -> list[torch.Tensor]:
    """The gradient of an outer loss of the outputs and final states by every parameter (zero
    where it does not reach)."""
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    total = (y * weights).sum() + sum((v ** 2).sum() for v in tensors(state).values()
                                      if v.requires_grad)
    params = list(m.parameters())
    if not params:
        return []
    grads = torch.autograd.grad(total, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def check(text: str, batch: int, steps: int, cuts: tuple[int, ...], outer: bool,
          through: bool = True, seed: int = 0, fast: bool = True) -> bool:
    """The property (the module docstring): located error at load or compile (both schedules
    alike), or the same stream in both schedules, a cut stream equal to one call, and
    learn=False equal to the plain forward. Whether it ran (not refused). `fast`: the chunked
    module must run every level in a fast form."""
    with hang_guard(HANG_LIMIT_S):
        spec = loaded_or_refused(text)
        if spec is None:
            return False
        reference, chunked = compiled(spec, "reference"), compiled(spec, "chunked")
        assert (reference is None) == (chunked is None), "refused by one schedule only"
        if reference is None:
            return False
        chunked.load_state_dict(reference.state_dict())
        levels = {lv.name for lv in chunked.program.levels}
        assert set(chunked.fast_paths) == (levels if fast else set(chunked.fast_paths)), \
            f"levels {sorted(levels)} not all in a fast form: {sorted(chunked.fast_paths)}"
        x, z, loss = data(batch, steps, seed)
        bound = tolerance(steps)
        runs = []
        for m in (reference, chunked):
            with torch.set_grad_enabled(outer):
                y, state = nldsl.stream(m, x, z, loss=loss, through_writes=through)
            runs.append((y, state, outer_gradients(m, y, state) if outer else None))
        (y_r, s_r, g_r), (y_c, s_c, g_c) = runs
        assert_close(y_c.detach(), y_r.detach(), bound, "y")
        assert_states_close(s_c, s_r, bound, "final state")
        if outer:
            assert_gradients_close(g_c, g_r, [n for n, _ in reference.named_parameters()],
                                   tolerance(steps, passes=2))
        with torch.no_grad():
            y_c, s_c = nldsl.stream(chunked, x, z, loss=loss)
            parts, state = [], None
            for a, b in zip((0,) + cuts, cuts + (steps,)):
                part, state = nldsl.stream(chunked, x[:, a:b], z[:, a:b], state, loss=loss,
                                           end=b == steps)
                parts.append(part)
            assert_close(torch.cat(parts, 1), y_c, bound, f"y cut at {cuts}")
            assert_states_close(state, s_c, bound, f"final state cut at {cuts}")
            frozen, frozen_state = chunked(x)
            off, off_state = nldsl.stream(chunked, x, z, loss=loss, learn=False)
        assert torch.equal(off, frozen), "learn=False is not the plain forward"
        assert_states_close(off_state, frozen_state, 0.0, "learn=False")
    return True


@st.composite
def streams(draw):
    steps = draw(st.integers(1, 12))
    cuts = tuple(sorted(draw(st.lists(st.integers(0, steps), min_size=1, max_size=2))))
    return dict(batch=draw(st.integers(1, 3)), steps=steps, cuts=cuts,
                outer=draw(st.integers(0, 2)) == 0, through=draw(st.integers(0, 3)) > 0)


@FUZZ_TASK
@given(text=task_specs(), stream=streams())
def test_drawn_task_spec_streams_alike_in_both_schedules_or_fails_located(text, stream):
    check(text, **stream)


@st.composite
def downstream_cases(draw, kind: str):
    """A spec whose task read is mixed across tokens downstream by a construct of `kind`
    (`downstream_task_specs`) and a stream with a call's end inside a period (at a token not a
    multiple of the fastest period: the segment it cuts must travel with its graph), outer
    gradients for half."""
    spec = draw(downstream_task_specs(kind))
    period = spec["period"]
    steps = draw(st.integers(period + 1, 12))
    inside = draw(st.sampled_from([c for c in range(1, steps) if c % period]))
    cuts = tuple(sorted([inside] + draw(st.lists(st.integers(0, steps), max_size=1))))
    return spec, dict(batch=draw(st.integers(1, 3)), steps=steps, cuts=cuts,
                      outer=draw(st.booleans()), through=draw(st.integers(0, 3)) > 0)


@pytest.mark.parametrize("kind", KINDS)
@FUZZ_DOWNSTREAM
@given(data=st.data())
def test_drawn_downstream_mixing_streams_alike_cut_or_not_or_fails_located(kind, data):
    """A backprop level, conv or attention reading a task read: the property of `check`; where
    a context or write uses the task read the chunked schedule has no fast form (`fast`)."""
    spec, stream = data.draw(downstream_cases(kind))
    ran = check(spec["text"], fast=spec["fast"], **stream)
    event(f"{spec['kind']}{'' if spec['fast'] else ' (no fast form)'}{'' if ran else ' refused'}")


# -- the snapshot chunk form: self-modifying levels (nldsl.fuzzing_task.snapshot_specs) ---------
#
# A drawn self-modifying spec either compiles and gives the same outputs, final states and
# gradients (of x and every parameter, for a third of the examples) in both schedules, and a
# stream cut into up to three calls equal to one, or is refused with a located error. The chunked module
# must run every level in a fast form (the snapshot chunk form; a memory level with only fixed
# projections may take the deep chunk form instead), or the test would compare the token loop
# with itself. Bound: tests/test_module_deep_memories.py's `deep_bound` (the same real function,
# sums associated differently, a write's error at most doubled per token: eta_scale <= 0.3 and
# unit keys keep each step's Jacobian below 2), twice it for gradients (two passes).

def snapshot_pair(spec):
    """Both schedules' float64 modules with the same O(1) parameters, or None when refused."""
    made = []
    for schedule in ("reference", "chunked"):
        torch.manual_seed(0)
        try:
            made.append(randomize(nldsl.compile(spec, schedule=schedule).to(torch.float64), 2))
        except nldsl.NLDSLError as err:
            assert_located(err)
            made.append(None)
    assert (made[0] is None) == (made[1] is None), "refused by one schedule only"
    return None if made[0] is None else made


def run_with_gradients(m, x, grads: bool):
    y, state = m(x)
    if not grads:
        return y.detach(), state, []
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    leaves = [x] + list(m.parameters())
    found = torch.autograd.grad((y * weights).sum(), leaves, allow_unused=True)
    return y.detach(), state, [torch.zeros_like(a) if g is None else g for a, g in zip(leaves, found)]


def check_snapshot(text: str, batch: int, steps: int, cuts: tuple[int, ...], grads: bool) -> None:
    """The property of this section's comment."""
    with hang_guard(HANG_LIMIT_S):
        spec = loaded_or_refused(text)
        if spec is None:
            return
        pair = snapshot_pair(spec)
        if pair is None:
            return
        reference, chunked = pair
        levels = {lv.name for lv in chunked.program.levels}
        assert set(chunked.fast_paths) == levels, \
            f"levels {sorted(levels)} not all in a fast form: {sorted(chunked.fast_paths)}"
        x = torch.randn(batch, steps, DIM, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(steps)).requires_grad_(grads)
        bound = deep_bound(steps, WIDTH)
        with torch.set_grad_enabled(grads):
            (y_r, s_r, g_r), (y_c, s_c, g_c) = (run_with_gradients(m, x, grads)
                                                for m in (reference, chunked))
        assert_close(y_c, y_r, bound, "y")
        assert_states_close(s_c, s_r, bound, "final state")
        if grads:
            assert_gradients_close(g_c, g_r, ["x"] + [n for n, _ in reference.named_parameters()],
                                   2 * bound)
        with torch.no_grad():
            parts, state = [], None
            for a, b in zip((0,) + cuts, cuts + (steps,)):
                part, state = chunked(x[:, a:b], state, end=b == steps)
                parts.append(part)
        assert_close(torch.cat(parts, 1), y_c, bound, f"y cut at {cuts}")
        assert_states_close(state, s_c, bound, f"final state cut at {cuts}")


@FUZZ_SNAPSHOT
@given(text=snapshot_specs(), stream=streams())
def test_drawn_self_modifying_spec_runs_alike_in_both_schedules_or_fails_located(text, stream):
    check_snapshot(text, stream["batch"], stream["steps"], stream["cuts"], stream["outer"])


# -- minimal specs the fuzzers found failing, each fixed: regression cases --------------------

def task_module(levels: str, out: str) -> str:
    return f"module m(dim: int = 3 >= 1) {{\n{levels}  out = {out}\n}}\n"


def task_level(name: str, period: int, memory: str, read: str, options: str = "") -> str:
    unit = "token" if period == 1 else "tokens"
    return (f"  level {name} every {period} {unit}{options} {{\n    state {memory}\n"
            f"    minimize task by gd(lr = 0.05)\n    read {read}\n  }}\n")


#: name -> (spec, stream, what went wrong)
FOUND_TASK: dict[str, tuple[str, dict, str]] = {
    "plain-init-learned-beside-same-period": (
        task_module(task_level("a", 2, "A : [dim, dim] init learned", "h = A(x)")
                    + task_level("b", 2, "B : [dim, dim] init learned", "g = B(x)"), "h + g"),
        dict(batch=1, steps=5, cuts=(3,), outer=True),
        "check refused `init learned` as learned by `a` (not slower); docs: by outer"),
    "no-tensors-float64": (
        task_module(task_level("a", 1, "A : [dim, dim] = eye()", "h = tanh(A(x))")
                    + task_level("b", 1, "B : [dim, dim] = eye()", "y = B(h)", " backprop"), "y"),
        dict(batch=2, steps=3, cuts=(2,), outer=False),
        "no parameter or buffer: float32 initial states met float64 input (a RuntimeError)"),
    "empty-call-in-a-nested-period": (
        task_module(task_level("a", 3, "A : mlp(dim -> dim, tanh)", "h = A(x) + x", " backprop")
                    + task_level("b", 1, "B : mlp(dim -> dim, tanh) init learned by a", "y = B(h)",
                                 " backprop"), "y"),
        dict(batch=2, steps=4, cuts=(1, 1), outer=False),
        "an empty call replaced the nodes of the nested block's graph by the module's copies"),
    "empty-call-inside-a-carried-segment": (
        task_module(task_level("a", 2, "A : [dim, dim] init learned", "h = A(x)")
                    + "  level down every 1 token backprop {\n    state D : mlp(dim -> dim, tanh)"
                      "\n    minimize l2(D(x), h) by gd(lr = 0.5)\n    read y = D(x)\n  }\n",
                    "y + h"),
        dict(batch=1, steps=3, cuts=(1, 1), outer=False, fast=False),
        "an empty call under no_grad converted the MLP memory's state without its graph: the "
        "carried segment's path from D's writes to A was lost (tests/test_module_task.py)"),
    "attention-inside-a-frozen-task-read": (
        task_module(task_level("a", 2, "A : [dim, dim] init learned", "h = A(x)")
                    + task_level("post", 2, "P : [dim, dim] init learned",
                                 "g = P(attention(h, h, h) + h)"), "g"),
        dict(batch=1, steps=3, cuts=(1,), outer=False),
        "the chunked schedule's frozen form gave a task level's read evaluator no attention: "
        "a KeyError (tests/test_module_task.py)"),
    "attention-in-a-self-modifying-read": (
        task_module(task_level("a", 2, "A : [dim, dim] init learned", "h = A(o)")
                    + "  level memory every 1 token chunk 2 backprop {\n    state M : mlp(dim ->"
                      " dim, tanh)\n    key k = l2norm(M(x))\n    minimize l2(M(k), x) by "
                      "gd(lr = 0.1)\n    read o = M(attention(x, x, x)) before write\n  }\n", "h"),
        dict(batch=1, steps=3, cuts=(1,), outer=False, fast=False),
        "the snapshot chunk form took a level whose before-write read attends, and evaluates "
        "the read per chunk: a KeyError (found by a probe beside the campaign; "
        "tests/test_module_snapshot_chunk.py)"),
}


@pytest.mark.parametrize("name", list(FOUND_TASK))
def test_found_task_cases(name):
    """Each must compile (the first was refused), then have the property."""
    text, stream, _ = FOUND_TASK[name]
    nldsl.compile(text)
    check(text, **stream)


#: name -> (spec, the located error's message, what went wrong): constructs now refused
FOUND_REFUSED: dict[str, tuple[str, str, str]] = {
    "attention-read-the-same-for-every-head": (
        task_module(task_level("a", 2, "A : [dim, dim] init learned", "h = A(x)")
                    + "  state Wo : [2 * dim, dim] = normal(0.5)\n  level down every 1 token "
                      "heads 2 {\n    read od = attention(h, h, h)\n  }\n", "od @ Wo + h"),
        "read 'od' of level 'down' (heads 2) is the same for every head",
        "nothing split the read (dim 3, heads 2): the checker took it as width 2 * dim, the "
        "runtime as dim, and compiling raised torch's RuntimeError at `od @ Wo` "
        "(tests/test_validation_shapes.py)"),
}


@pytest.mark.parametrize("name", list(FOUND_REFUSED))
def test_found_refused_cases(name):
    text, message, _ = FOUND_REFUSED[name]
    with pytest.raises(nldsl.NLDSLError, match=re.escape(message)) as err:
        nldsl.compile(text)
    assert_located(err.value)
    assert not check(text, batch=1, steps=3, cuts=(1,), outer=False)


#: name -> (spec, what went wrong); run as check_snapshot(text, 2, 8, (3,), grads=True)
FOUND_SNAPSHOT: dict[str, tuple[str, str]] = {
    "named-target-after-a-stopgrad": (
        STOPGRAD_FIRST["stateless-value"],
        "v memoised graph-less by the stopgrad that asked first: grad Wv lost `target = v`"),
    "another-levels-value-under-a-stopgrad": (
        STOPGRAD_FIRST["another-levels-value"],
        "another level's v sliced to the chunk under a stopgrad: M(v) in the loss lost grad x"),
}


@pytest.mark.parametrize("name", list(FOUND_SNAPSHOT))
def test_found_snapshot_cases(name):
    check_snapshot(FOUND_SNAPSHOT[name][0], 2, 8, (3,), grads=True)
