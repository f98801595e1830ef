"""nldsl/module/unit.py: the reference evaluates each value at the Program's placement and
applies the Program's head splits (tampering with either changes what it computes)."""
from __future__ import annotations

from dataclasses import replace

import torch

from nldsl.lower.program import INPUT, SNAPSHOT
from nldsl.module import compile as compile_module
from nldsl.module.reference import run_reference
from nldsl.module.unit import UnitValues
from nldsl.spec import load

#: chunk 2: `own` reads M at the chunk start, which differs from M now at the second token.
SNAPSHOTTED = """module snapshotted(dim: int >= 1) {
  state Wk : [dim, dim] = normal(0.5)
  level memory every 1 token chunk 2 {
    state M : [dim, dim] = eye()
    key k = x @ Wk
    let own = M(k)
    minimize l2(M(k), 2 * k) by gd(lr = 0.5)
    read y = own
  }
  out = y
}"""


def run(module, program, x):
    return run_reference(program, dict(module.named_parameters()), x, module.initial_state(1))[0]


def test_a_snapshot_context_reads_the_chunk_start_state():
    torch.manual_seed(0)
    module = compile_module(load(SNAPSHOTTED), schedule="reference", dim=3)
    level = module.program.levels[0]
    assert level.placements["own"].stage == SNAPSHOT
    x = torch.randn(1, 2, 3)
    y = run(module, module.program, x)
    assert torch.allclose(y[:, 1], x[:, 1] @ module.Wk)             # M is still eye() at t = 2
    moved = replace(level, placements=level.placements | {"own": replace(
        level.placements["own"], stage=INPUT)})
    y_now = run(module, replace(module.program, levels=[moved]), x)
    assert not torch.allclose(y_now[:, 1], y[:, 1])                # M after the first write


def test_a_split_context_is_stored_per_head():
    module = compile_module("linear_attention", schedule="reference", dim=4, heads=2, head_dim=3)
    level = module.program.levels[0]
    state = module.initial_state(5)
    unit = UnitValues(module.program, dict(module.named_parameters()), state,
                      torch.randn(5, 4), 1)
    assert unit.context(level, "k").shape == (5, 2, 3)             # [B, H, d], not [B, 1, H d]



#: a window whose loss applies the straight-through derived memory S (moneta's form), here of
#: W = 1 * A: S = A + stopgrad(A - A) has A's value and derivative.
WINDOW_OF_DERIVED = """module windowed(dim: int >= 1) {
  state Wk : [dim, dim] = normal(0.5)
  level memory every 1 token chunk 2 {
    state A : mlp(dim -> dim)
    let W = 1 * A
    let S = A + stopgrad(W - A)
    key k = x @ Wk
    minimize window(2, l2(S(k), k)) by gd(lr = 0.5)
    read y = W(k)
  }
  out = y
}"""


def test_a_window_sees_derived_memories_as_it_sees_states():
    """window(2, l2(S(k), k)) with S equal to A (value and derivative) computes what
    window(2, l2(A(k), k)) does (tests/test_fuzz_deep.py FOUND "window-of-a-derived-memory":
    the window's evaluation did not know derived memories, a RuntimeError)."""
    torch.manual_seed(0)
    derived = compile_module(WINDOW_OF_DERIVED, schedule="reference", dim=3).double()
    plain = compile_module(WINDOW_OF_DERIVED.replace("l2(S(k), k)", "l2(A(k), k)"),
                           schedule="reference", dim=3).double()
    plain.load_state_dict(derived.state_dict())
    x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (y_d, s_d), (y_p, s_p) = derived(x), plain(x)
    torch.testing.assert_close(y_d, y_p, rtol=0, atol=0)
    for a, b in zip(s_d["memory"]["A"], s_p["memory"]["A"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
