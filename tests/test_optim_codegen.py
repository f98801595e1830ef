"""Generated code: printed by `nldsl compile --show-code` for every optimizer, registered with
linecache so a traceback from inside a compiled optimizer shows a readable line."""
import linecache
import traceback

import pytest
import torch

import nldsl
from nldsl.errors import NLDSLValueError
from nldsl.cli import main
from nldsl.optim.codegen import compile_plan, generate_foreach, generate_loop
from nldsl.optim.plan import lower

OPTIMIZERS = ["sgd", "momentum", "adam", "adamw", "adagrad", "rmsprop", "muon", "dgd",
              "delta_momentum", "dmgd", "m3"]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_show_code_prints_the_generated_source(name, capsys):
    assert main(["compile", name, "--show-code"]) == 0
    out = capsys.readouterr().out
    assert f"nldsl optimizer {name!r}" in out and "def step_" in out
    compile(out, "<shown>", "exec")


def test_compile_without_show_code_prints_the_derived_rules(capsys):
    assert main(["compile", "adam"]) == 0
    out = capsys.readouterr().out
    assert "m <- lerp(m, g, 1 - betas[0])" in out and "fused kernel" in out


#: a module spec that loads, but that the module compiler refuses (twice)
REFUSED = """module refused(dim: int >= 1) {
  level slow every 4 tokens {
    state A : [dim, dim] = eye()
    minimize task by momentum(lr = 0.1, beta = 0.9)
    read h = A(x)
  }
  level fast every 2 tokens {
    state B : [dim, dim] = eye()
    minimize task by momentum(lr = 0.1, beta = 0.9)
    read y = B(h)
  }
  out = y
}
"""


def test_compile_of_a_module_the_compiler_cannot_run_is_a_located_error(capsys, tmp_path):
    path = tmp_path / "refused.nl"
    path.write_text(REFUSED)
    assert main(["compile", str(path), "--show-code"]) == 1
    assert "refused.nl:4:22: error: `minimize task by momentum` is not compiled yet" \
        in capsys.readouterr().err


def test_traceback_points_at_a_generated_line():
    """A step that fails is a located error at the spec's expression (NLDSLValueError, a
    ValueError); its cause, the error inside generated code, has the generated line."""
    compiled = compile_plan(lower(nldsl.load("muon")))
    vector = torch.nn.Parameter(torch.ones(3))          # Muon needs matrices: this one fails
    vector.grad = torch.ones(3)
    with pytest.raises(NLDSLValueError, match="no dim 1") as info:   # its matrix shape, size(W, 1), fails
        compiled([vector], [{"step": 0, "buf": torch.zeros(3)}],
                 {"lr": 1e-3, "weight_decay": 0.1, "momentum": 0.95,
                  "ns_coefficients": (3.4445, -4.775, 2.0315), "eps": 1e-7, "ns_steps": 5})
    assert "muon.nl:" in str(info.value) and "size(W, 0) / size(W, 1)" in str(info.value)
    cause = info.value.__cause__
    frames = [f for f in traceback.extract_tb(cause.__traceback__) if f.filename.startswith("<nldsl:muon")]
    assert frames and "K.size(u_W[0], 1)" in frames[0].line
    assert linecache.getline(frames[0].filename, frames[0].lineno).strip() == frames[0].line


DEEP = "grad(W)"
for _ in range(45):                      # past the printer's MAX_PARENS: temporaries are hoisted
    DEEP = f"abs({DEEP})"
SLOW_DEEP = ("optimizer o(lr = 0.1 > 0) {\n  level a every 2 steps {\n    state s like W = 0\n"
             f"    s <- {DEEP} - s\n  }}\n  level w every 1 step {{ W <- W - lr * s }}\n}}\n")


@pytest.mark.parametrize("generate", [generate_foreach, generate_loop], ids=["foreach", "loop"])
def test_hoisted_temporaries_sit_in_the_block_of_their_statement(generate):
    """One emitter owns the indentation: a slower level's write and the temporaries it hoists
    are both inside its `if writing:` block, and the source compiles."""
    source = generate(lower(nldsl.load(SLOW_DEEP)))
    compile(source, "<generated>", "exec")
    lines = source.splitlines()
    guard = lines.index("    if writing:")
    assert lines[guard + 1].startswith("        _t1 = ")
    assert all((len(line) - len(line.lstrip(" "))) % 4 == 0 for line in lines)


HELD = ("optimizer o(lr = 0.01 > 0, k: int = 1 >= 1) {\n  level a every k steps {\n"
        "    read r = W\n  }\n  level w every 1 step { W <- W - lr * tanh(r) }\n}\n")


@pytest.mark.parametrize("generate", [generate_foreach, generate_loop], ids=["foreach", "loop"])
def test_a_held_read_is_the_new_value_after_its_levels_write(generate):
    """A slower level's read is stored at its writes; a later level of the same step reads the
    stored value (the reference looks it up when used), so the generated code binds it again
    inside the write's block. It read the value of the level's previous write (found by
    tests/test_fuzz_optim.py at k = 1: W lagged a step)."""
    lines = [line.strip() for line in generate(lower(nldsl.load(HELD))).splitlines()]
    block = lines[lines.index("if writing:"):lines.index("# level w, every 1 step(s)")]
    assert any("'read.r'] = " in line for line in block)
    assert any(line.startswith("u_r = ") for line in block)
