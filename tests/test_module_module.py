"""Issue 9 §2: the compiled module's contract: call, state structure, parameter names,
state_dict, to(), repr, and clear errors for bad input and for what does not compile yet."""
from __future__ import annotations


import pytest
import torch

import nldsl
from _module_cases import SPECS, assert_close, build, flat_state, inputs, rounding_bound
from nldsl.errors import NLDSLCompileError, NLDSLError
from nldsl.lower.schedule import run_order, segment_chunks
from nldsl.lower.timing import snapshot_reads
from nldsl.module import compile as compile_module, taskgrad
from nldsl.module.chunked import call_plan

SCHEDULES = ["reference", "chunked"]

#: spec -> {parameter: shape} at SPECS' sizes with heads = 2: the names the spec gives
#: (Wk, W_beta, Wo, ...) and `<definition>_conv` [channels, width] for each conv.
PARAMETERS = {
    "linear_attention": dict(Wk=(8, 6), Wv=(8, 6), Wq=(8, 6), Wo=(6, 8)),
    "deltanet": dict(Wk=(8, 6), Wv=(8, 6), Wq=(8, 6), W_beta=(8, 2), o_norm=(3,), Wo=(6, 8),
                     k_conv=(6, 4), v_conv=(6, 4), q_conv=(6, 4)),
    "gated_deltanet": dict(Wk=(8, 6), Wv=(8, 10), Wq=(8, 6), W_a=(8, 2), A_log=(2,),
                           dt_bias=(2,), W_beta=(8, 2), W_g=(8, 10), o_norm=(5,), Wo=(10, 8),
                           k_conv=(6, 3), v_conv=(10, 3), q_conv=(6, 3)),
    "deltanet_recurrence": dict(Wk=(8, 8), Wv=(8, 8), Wq=(8, 8), W_beta=(8, 2), Wo=(8, 8)),
    "gated_deltanet_recurrence": dict(Wk=(8, 8), Wv=(8, 8), Wq=(8, 8), W_a=(8, 2), A_log=(2,),
                                      dt_bias=(2,), W_beta=(8, 2), Wo=(8, 8)),
}
#: spec -> (d_v, d_k) of the memory M, and its conv caches' channels (width - 1 rows).
MEMORY = {"linear_attention": (3, 3), "deltanet": (3, 3), "gated_deltanet": (5, 3),
          "deltanet_recurrence": (4, 4), "gated_deltanet_recurrence": (4, 4)}
CACHES = {"deltanet": dict(k_conv=(3, 6), v_conv=(3, 6), q_conv=(3, 6)),
          "gated_deltanet": dict(k_conv=(2, 6), v_conv=(2, 10), q_conv=(2, 6))}


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("spec", list(SPECS))
def test_call_shapes_and_state_structure(spec, schedule):
    m = build(spec, schedule, heads=2)
    x = inputs(3, 7, 8, 0)
    y, state = m(x)
    assert y.shape == (3, 7, 8) and y.dtype == torch.float64
    assert set(state) == {"_stream", "memory"}
    assert set(state["memory"]) == {"M"}
    assert state["memory"]["M"].shape == (3, 2) + MEMORY[spec]          # [B, H, d_v, d_k]
    assert state["_stream"]["t"] == 7 and isinstance(state["_stream"]["t"], int)
    caches = {k: tuple(v.shape[1:]) for k, v in state["_stream"].items() if k != "t"}
    assert caches == CACHES.get(spec, {})
    assert all(v.shape[0] == 3 for k, v in state["_stream"].items() if k != "t")
    _, state = m(inputs(3, 5, 8, 1), state)
    assert state["_stream"]["t"] == 12


@pytest.mark.parametrize("spec", list(SPECS))
def test_parameters_are_named_as_the_spec_names_them(spec):
    m = build(spec, "chunked", heads=2)
    shapes = {name: tuple(p.shape) for name, p in m.named_parameters()}
    assert shapes == PARAMETERS[spec]
    assert getattr(m, "Wk") is m.get_parameter("Wk")
    assert all(isinstance(p, torch.nn.Parameter) for p in m.parameters())


def test_declared_initial_values():
    """o_norm = 1, A_log = 0, dt_bias = log(exp(0.01) - 1) as the gated_deltanet spec says;
    normal(0.02) projections have about that std; conv kernels within +-1/sqrt(width)."""
    torch.manual_seed(0)
    m = compile_module("gated_deltanet", dim=64, heads=4, head_dim=16, head_v_dim=32)
    assert torch.equal(m.o_norm, torch.ones(32))
    assert torch.equal(m.A_log, torch.zeros(4))
    assert torch.allclose(m.dt_bias, torch.full((4,), torch.log(torch.expm1(torch.tensor(0.01)))))
    assert 0.015 < m.Wk.std().item() < 0.025                    # 4096 draws: std error ~1%
    assert m.k_conv.abs().max() <= 0.5 and m.k_conv.shape == (64, 4)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_initial_state_is_zero_and_from_none(schedule):
    m = build("deltanet", schedule, heads=2)
    x = inputs(2, 6, 8, 0)
    y, state = m(x)
    start = m.initial_state(2)
    assert torch.equal(start["memory"]["M"], torch.zeros(2, 2, 3, 3, dtype=torch.float64))
    assert all(torch.equal(v, torch.zeros_like(v)) for k, v in start["_stream"].items() if k != "t")
    y_explicit, _ = m(x, start)
    assert torch.equal(y_explicit, y)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_the_state_passed_in_is_not_modified(schedule):
    """A state can be reused: calling twice from the same state gives the same values, and
    the caller's dict and tensors are unchanged."""
    m = build("deltanet", schedule, heads=2)
    _, state = m(inputs(2, 9, 8, 0), end=False)
    kept = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in flat_state(state).items()}
    x = inputs(2, 5, 8, 1)
    y1, s1 = m(x, state)
    y2, s2 = m(x, state)
    assert torch.equal(y1, y2) and torch.equal(s1["memory"]["M"], s2["memory"]["M"])
    for name, value in flat_state(state).items():
        assert (torch.equal(value, kept[name]) if isinstance(value, torch.Tensor)
                else value == kept[name]), name


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_empty_sequence(schedule):
    m = build("deltanet", schedule, heads=2)
    _, state = m(inputs(2, 4, 8, 0), end=False)
    y, after = m(inputs(2, 0, 8, 0), state)
    assert y.shape == (2, 0, 8)
    assert after["_stream"]["t"] == 4
    assert torch.equal(after["memory"]["M"], state["memory"]["M"])


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("spec", ["deltanet", "gated_deltanet"])
def test_state_dict_round_trip(spec, schedule):
    """A fresh module of another seed, loaded with the state_dict, gives identical outputs
    (the same operations on the same numbers)."""
    m = build(spec, schedule, heads=2, seed=1)
    torch.manual_seed(99)
    fresh = compile_module(SPECS[spec][0], schedule=schedule, heads=2, **SPECS[spec][1])
    fresh = fresh.to(torch.float64)
    x = inputs(2, 11, 8, 2)
    assert not torch.equal(fresh(x)[0], m(x)[0])
    missing, unexpected = fresh.load_state_dict(m.state_dict())
    assert not missing and not unexpected
    assert set(m.state_dict()) == set(PARAMETERS[spec])
    assert torch.equal(fresh(x)[0], m(x)[0])


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_to_float64_and_back(schedule):
    torch.manual_seed(0)
    m = compile_module("deltanet", schedule=schedule, dim=8, heads=2, head_dim=3)
    x32 = torch.randn(2, 5, 8)
    y32, s32 = m(x32)
    assert y32.dtype == torch.float32 and s32["memory"]["M"].dtype == torch.float32
    m64 = m.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in m64.parameters())
    y64, s64 = m64(x32.double())
    assert y64.dtype == torch.float64 and s64["memory"]["M"].dtype == torch.float64
    assert s64["_stream"]["k_conv"].dtype == torch.float64
    # float32 carries ~ 2^-24 relative per op; a few hundred ops here: 1e-4 is generous
    assert torch.allclose(y64.float(), y32, rtol=1e-4, atol=1e-4 * y32.abs().max().item())


def test_to_moves_a_module_with_a_random_initial_state():
    """Buffers (a random fast-state start) move with to() too."""
    text = SPEC_WITH_RANDOM_START
    torch.manual_seed(0)
    m = compile_module(text, dim=6).to(torch.float64)
    y, state = m(torch.randn(1, 3, 6, dtype=torch.float64))
    assert state["memory"]["M"].dtype == torch.float64


#: No parameter and no buffer: nothing for to() to convert (found by tests/test_fuzz_task.py:
#: float64 input met float32 initial states, a RuntimeError from a matmul).
NO_TENSORS = """module m(dim: int = 3 >= 1) {
  level mem every 2 tokens {
    state A : [dim, dim] = eye()
    minimize l2(A(x), x) by gd(lr = 0.1)
    read y = A(x)
  }
  out = y
}
"""


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_a_module_without_tensors_runs_in_the_inputs_dtype(schedule, dtype):
    """Its states take the input's dtype (check_input accepts any), also when a cut stream
    passes them back."""
    m = compile_module(NO_TENSORS, schedule=schedule)
    assert not list(m.parameters()) and not list(m.buffers())
    x = torch.randn(2, 5, 3, dtype=dtype)
    y, state = m(x)
    assert y.dtype == dtype and state["mem"]["A"].dtype == dtype
    first, carried = m(x[:, :3], end=False)
    second, _ = m(x[:, 3:], carried)
    assert_close(torch.cat([first, second], 1), y, rounding_bound(5, 3), "y cut at 3")


def test_repr_names_spec_schedule_and_hyperparameters():
    m = compile_module("gated_deltanet", schedule="chunked", block_size=32, dim=8, heads=2,
                       head_dim=3, head_v_dim=5)
    text = repr(m)
    assert "gated_deltanet(" in text
    for part in ("dim=8", "heads=2", "head_dim=3", "head_v_dim=5", "conv_width=4", "chunked"):
        assert part in text, part


SPEC_WITH_RANDOM_START = '''module rnd(dim: int >= 1) {
  state Wk : [dim, 3] = normal(0.02)
  state Wo : [3, dim] = normal(0.02)
  level memory every 1 token backprop {
    state M : [3, 3] = normal(0.1)
    key k = l2norm(x @ Wk)
    minimize l2(M(k), k) by gd(lr = 0.5)
    read y = M(k)
  }
  out = y @ Wo
}
'''

SPEC_WITH_LEARNED_START = '''module learned(dim: int >= 1, heads = 2 >= 1) {
  state Wk : [dim, heads * 3] = normal(0.3)
  state Wv : [dim, heads * 3] = normal(0.3)
  state W_beta : [dim, heads] = normal(0.3)
  state Wo : [heads * 3, dim] = normal(0.3)
  level memory every 1 token heads heads backprop {
    state M : [3, 3] init learned
    key k = l2norm(x @ Wk)
    value v = x @ Wv
    gate beta = sigmoid(x @ W_beta)
    minimize l2(M(k), v) by gd(lr = beta)
    read y = M(k)
  }
  out = y @ Wo
}
'''


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_learned_initial_state(schedule):
    """`init learned` is the parameter `M_init` [H, d_v, d_k]; the state starts from it for
    every sequence, and the loss reaches it."""
    torch.manual_seed(0)
    m = compile_module(SPEC_WITH_LEARNED_START, schedule=schedule, dim=6).to(torch.float64)
    assert tuple(m.M_init.shape) == (2, 3, 3)
    with torch.no_grad():
        m.M_init.copy_(torch.randn(2, 3, 3, dtype=torch.float64))
    start = m.initial_state(4)["memory"]["M"]
    assert start.shape == (4, 2, 3, 3) and torch.equal(start[3], m.M_init)
    y, _ = m(torch.randn(4, 5, 6, dtype=torch.float64))
    (grad,) = torch.autograd.grad(y.square().sum(), [m.M_init])
    assert grad.abs().max() > 0


def test_learned_initial_state_schedules_agree():
    torch.manual_seed(0)
    ref = compile_module(SPEC_WITH_LEARNED_START, schedule="reference", dim=6).double()
    fast = compile_module(SPEC_WITH_LEARNED_START, schedule="chunked", block_size=4, dim=6).double()
    fast.load_state_dict(ref.state_dict())
    with torch.no_grad():
        ref.M_init.copy_(torch.randn(2, 3, 3, dtype=torch.float64))
        fast.M_init.copy_(ref.M_init)
    assert fast.fast_paths
    x = torch.randn(2, 13, 6, dtype=torch.float64)
    from _module_cases import assert_close, rounding_bound
    assert_close(fast(x)[0], ref(x)[0], rounding_bound(13, 3, 4), "y")


# -- bad input ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return compile_module("deltanet", dim=8, heads=2, head_dim=3)


@pytest.mark.parametrize("x, message", [
    pytest.param(torch.randn(5, 8), r"shape \[B, T, 8\].*got \[5, 8\]", id="rank-2"),
    pytest.param(torch.randn(1, 2, 5, 8), r"shape \[B, T, 8\].*got \[1, 2, 5, 8\]", id="rank-4"),
    pytest.param(torch.randn(2, 5, 7), r"dim=8.*got \[2, 5, 7\]", id="width"),
    pytest.param(torch.randn(2, 5, 8, dtype=torch.float64), r"float64.*float32", id="dtype"),
])
def test_bad_x(small, x, message):
    with pytest.raises(ValueError, match=message):
        small(x)


def test_x_not_a_tensor(small):
    with pytest.raises(TypeError, match="tensor x"):
        small([[0.0] * 8])


def _state_of(spec, batch, **hparams):
    torch.manual_seed(0)
    m = compile_module(spec, dim=8, **hparams)
    return m(torch.randn(batch, 3, 8))[1]


@pytest.mark.parametrize("state, message", [
    pytest.param(lambda: _state_of("deltanet", 3, heads=2, head_dim=3), "batch size",
                 id="other-batch-size"),
    pytest.param(lambda: _state_of("linear_attention", 2, heads=2, head_dim=3),
                 "not deltanet's|expected", id="other-spec"),
    pytest.param(lambda: _state_of("deltanet", 2, heads=4, head_dim=3), "another batch size or spec",
                 id="other-heads"),
    pytest.param(lambda: "state", "dict a previous call returned", id="not-a-dict"),
    pytest.param(lambda: {**_state_of("deltanet", 2, heads=2, head_dim=3),
                          "_stream": {"t": -1, **{k: v for k, v in _state_of(
                              "deltanet", 2, heads=2, head_dim=3)["_stream"].items()
                              if k != "t"}}},
                 "non-negative count", id="negative-t"),
])
def test_bad_state(small, state, message):
    with pytest.raises((ValueError, TypeError), match=message):
        small(torch.randn(2, 4, 8), state())


def test_state_of_another_dtype(small):
    state = _state_of("deltanet", 2, heads=2, head_dim=3)
    state["memory"]["M"] = state["memory"]["M"].double()
    with pytest.raises(ValueError, match="dtype|float64"):
        small(torch.randn(2, 4, 8), state)


def test_unknown_hyperparameter_suggests_the_name():
    with pytest.raises(NLDSLError, match=r"(?s)no hyper-parameter 'head_dimm'.*did you mean 'head_dim'"):
        compile_module("deltanet", dim=8, head_dimm=3)


def test_missing_hyperparameter():
    with pytest.raises(NLDSLError, match=r"needs a value for dim"):
        compile_module("deltanet")


@pytest.mark.parametrize("spec, hparams, message, caret", [
    pytest.param("deltanet", dict(dim=8, heads=0),
                 "deltanet: heads = 0 is outside its declared range (>= 1)", "heads = 4 >= 1", id="heads-0"),
    pytest.param("deltanet", dict(dim=8.5), "deltanet: dim = 8.5 is not an int (declared `dim: int`)",
                 "dim: int >= 1", id="dim-not-int"),
    pytest.param("linear_attention", dict(dim=8, decay=1.5),
                 "linear_attention: decay = 1.5 is outside its declared range (in [0, 1])",
                 "decay = 1.0 in [0, 1]", id="decay-above-range"),
    pytest.param("linear_attention", dict(dim=8, lr=0.0),
                 "linear_attention: lr = 0.0 is outside its declared range (> 0)", "lr = 1.0 > 0",
                 id="lr-not-positive"),
    pytest.param("deltanet", dict(dim=True), "deltanet: dim = True is not an int", "dim: int",
                 id="bool-is-no-int"),
    pytest.param("deltanet", dict(dim=8, head_dim=float("nan")),
                 "deltanet: head_dim = nan is outside its declared range (>= 1)", "head_dim = 64",
                 id="nan"),
])
def test_out_of_range_hyperparameter(spec, hparams, message, caret):
    """A value that breaks its declaration is refused before any code is generated, located at
    the declaration it breaks, and a ValueError as torch raises for a bad value."""
    with pytest.raises(NLDSLError) as caught:
        compile_module(spec, **hparams)
    text = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert f"{spec}.nl:" in text and message in text and caret in text and "^" in text


def test_a_period_set_by_a_passed_value_must_be_a_positive_integer():
    spec = nldsl.load("""module m(dim: int >= 1, n = 2) {
  level memory every n tokens {
    state M : [dim, dim] = 0
    read y = M(x)
  }
  out = y
}""")
    with pytest.raises(NLDSLError, match=r"m: a level's period \(`every n tokens` in level "
                                         r"'memory'\) must be a positive integer, got 0 \(from n = 0\)"):
        compile_module(spec, dim=4, n=0)


def test_an_optimizer_spec_is_refused():
    with pytest.raises(NLDSLError, match="adam is an optimizer"):
        compile_module("adam")


@pytest.mark.parametrize("kwargs, message", [
    pytest.param(dict(schedule="fast"), "schedule must be one of", id="schedule"),
    pytest.param(dict(block_size=0), "block_size must be a positive int", id="block-0"),
    pytest.param(dict(block_size=True), "block_size must be a positive int", id="block-bool"),
    pytest.param(dict(block_size=4.0), "block_size must be a positive int", id="block-float"),
])
def test_bad_schedule_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        compile_module("deltanet", dim=8, **kwargs)


# -- what does not compile yet: a located NLDSLCompileError naming the construct --------------

_BASE = '''module unsupported(dim: int >= 1) {
  state Wk : [dim, 4] = normal(0.02)
  state Wo : [4, dim] = normal(0.02)
  level memory every PERIOD token backprop {
    state M : [4, 4] = 0
    key k = x @ Wk
    OBJECTIVE
    read y = M(k)
  }
  out = OUT
}
'''
UNSUPPORTED = {
    "minimize-task-by-ema": ("minimize task by ema(beta = 0.9)", "1", "y @ Wo", "ema(beta = 0.9)",
                             "`minimize task by ema`"),
    "rule-chain-transform": ("minimize l2(M(k), k) by gd(lr = 0.1) then gd(lr = 0.2)", "1",
                             "y @ Wo", "gd(lr = 0.1)", "cannot transform the update"),
    "rule-chain-end": ("minimize l2(M(k), k) by momentum(lr = 1, beta = 0.5) then ema(0.5) "
                       "then newton_schulz(5)", "1", "y @ Wo", "newton_schulz(5)",
                       "a Newton-Schulz rule that restarts"),
    "newton-schulz-restart": ("minimize l2(M(k), k) by newton_schulz(5)", "1", "y @ Wo",
                              "newton_schulz(5)", "a Newton-Schulz rule that restarts"),
    "chain-momentum-every-2": ("minimize l2(M(k), k) by momentum(lr = 1, beta = 0.9) then "
                               "gd(lr = 0.1)", "2", "y @ Wo", "momentum(lr = 1, beta = 0.9)",
                               "momentum on a level that writes every N > 1"),
    "window-sees-t": ("minimize window(2, l2(M(k), k), sigmoid(t)) by gd(lr = 0.1)", "1", "y @ Wo",
                      "t)) by", "`window` sees past tokens through the level's contexts"),
    "attention-in-a-loss": ("minimize l2(M(k), attention(k, k, k)) by gd(lr = 0.1)", "1",
                            "y @ Wo", "attention(k, k, k)", "`attention` in a `minimize` loss"),
    "attention-in-an-update": ("M <- M + outer(window_attention(k, k, k, 2), k)", "1", "y @ Wo",
                               "window_attention(k, k, k, 2)", "`window_attention` in an explicit"),
    "momentum-every-2": ("minimize l2(M(k), k) by momentum(lr = 0.1, beta = 0.9)", "2",
                         "y @ Wo", "momentum(lr = 0.1, beta = 0.9)", "momentum on a level"),
    "conv-in-a-loss": ("minimize l2(conv(M(k), 2), k) by gd(lr = 0.1)", "1", "y @ Wo",
                       "conv(M(k), 2)", "a conv inside an objective"),
    "conv-in-a-rule": ("minimize l2(M(k), k) by gd(lr = sigmoid(conv(k, 2)))", "1", "y @ Wo",
                       "conv(k, 2)", "a conv inside an objective"),
}


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_unsupported_construct_is_located(name):
    """The error's line:col is where the construct is written."""
    objective, period, out, where, construct = UNSUPPORTED[name]
    text = (_BASE.replace("OBJECTIVE", objective).replace("PERIOD", period)
            .replace("OUT", out))
    if period != "1":
        text = text.replace("token backprop", "tokens backprop")
    with pytest.raises(NLDSLCompileError) as info:
        compile_module(text, dim=8)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if where in row)
    col = text.splitlines()[line - 1].index(where) + 1
    assert f":{line}:{col}: error:" in str(info.value)
    assert construct in str(info.value)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("spec", list(SPECS))
def test_sequences_of_a_batch_are_independent(spec, schedule):
    """Each sequence of a batch gives what it gives alone (batch dims are never mixed); to
    rounding, since batched products may associate differently."""
    from _module_cases import assert_close, rounding_bound
    m = build(spec, schedule, block_size=8, heads=2)
    x = inputs(3, 12, 8, 4)
    with torch.no_grad():
        y, state = m(x)
        for b in range(3):
            alone, own = m(x[b:b + 1])
            bound = rounding_bound(12, 5, 8)
            assert_close(alone, y[b:b + 1], bound, f"y of sequence {b}")
            assert_close(own["memory"]["M"], state["memory"]["M"][b:b + 1], bound, f"M of {b}")


@pytest.mark.parametrize("spec, hparams", [
    pytest.param("titans", dict(heads=2, head_dim=4, chunk_size=3), id="titans-deep-form"),
    pytest.param("self_modifying_titans", dict(chunk_projections=2, chunk_memory=3),
                 id="self-modifying-titans-snapshot-form"),
])
def test_torch_compile_keeps_the_inner_gradients(spec, hparams):
    """torch.compile(m) traces the module around its inner gradients, which run eagerly
    (torch.compiler.disable): a traced torch.autograd.grad would lose the tensors it
    differentiates. aot_eager traces as inductor does, without generating code: the same
    operations, so equal to rounding of a few reassociated sums."""
    from _module_cases import assert_close
    from test_module_deep_memories import deep_bound
    torch.manual_seed(0)
    m = compile_module(spec, dim=8, **hparams).double()
    x = torch.randn(2, 7, 8, dtype=torch.float64)
    with torch.no_grad():
        compiled = torch.compile(m, backend="aot_eager")(x)[0]
        assert_close(compiled, m(x)[0], deep_bound(7, 2 * 8), "y")


def test_the_program_walks_are_computed_once_and_change_no_value():
    """m.call_plan and m.recordable are what the program gives (schedule.run_order,
    segment_chunks, timing.snapshot_reads; taskgrad.recordable), and a call with the plan computes
    exactly what a call with a plan walked again does: the same ops."""
    torch.manual_seed(0)
    block = nldsl.lm("hope", vocab_size=8, dim=16, depth=1, period_fast=2, period_mid=4,
                     period_slow=8).blocks[0]
    program = block.program
    assert block.call_plan.order == tuple(run_order(program))
    assert block.call_plan.chunks == segment_chunks(program)
    assert block.call_plan.leaves == snapshot_reads(program.levels) == {"o"}
    assert block.recordable == {level.name: taskgrad.recordable(program, level, block.fast_paths)
                                for level in program.levels if level.task}
    assert block.recordable["cms_fast"] == ("theta_fast",)
    x = torch.randn(2, 11, 16)                                             # [B, T, dim]
    y, state = block(x)
    plan, block.call_plan = block.call_plan, call_plan(program)
    try:
        y_walked, state_walked = block(x)
    finally:
        block.call_plan = plan
    assert torch.equal(y, y_walked)
    walked = flat_state(state_walked)
    for name, value in flat_state(state).items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, walked[name]), name
        elif isinstance(value, tuple):
            assert all(torch.equal(a, b) for a, b in zip(value, walked[name])), name
        else:
            assert value == walked[name], name
