"""`nldsl.load` and the `Spec` it returns: parse + build + validate, and the views of a spec."""
from __future__ import annotations

import pytest

import nldsl
from nldsl.errors import NLDSLSyntaxError, NLDSLValidationError
from nldsl.language.parser import parse

TEXT = """# Heavy ball, in a file of its own.
optimizer heavy(lr = 0.1 > 0, beta = 0.9 in [0, 1)) {
  level weights every 1 step {
    W <- W - lr * m
  }
  level moments every 1 step {
    key g = grad(W)
    state m like W = 0
    m: minimize -dot(m, g) by gd(lr = 1, decay = beta)
  }
}
"""


@pytest.mark.parametrize("source", ["text", "path"])
def test_load_from_text_or_path(source, tmp_path):
    if source == "path":
        path = tmp_path / "heavy.nl"
        path.write_text(TEXT)
        spec = nldsl.load(str(path))
        assert spec.source.filename == str(path)
    else:
        spec = nldsl.load(TEXT)
    assert (spec.name, spec.kind, spec.text) == ("heavy", "optimizer", TEXT)
    assert list(spec.graph.levels) == ["weights", "moments"]
    assert spec.graph.update_order() == ["moments", "weights"]


def test_str_is_the_canonical_text_and_parses_back():
    spec = nldsl.load(TEXT)
    assert parse(str(spec)) == spec.decl


def test_to_dot_draws_one_cluster_per_level():
    dot = nldsl.load(TEXT).to_dot()
    assert dot.startswith("digraph") and dot.count("subgraph cluster") == 2


def test_errors_are_syntax_or_validation_errors_with_the_filename():
    with pytest.raises(NLDSLSyntaxError):
        nldsl.load(TEXT.replace("by gd", "gd"))
    with pytest.raises(NLDSLValidationError) as caught:
        nldsl.load(TEXT.replace("decay = beta", "decay = 2"))
    assert str(caught.value).startswith("<string>:9:") and "decay outside [0, 1]" in str(caught.value)


# ---------------------------------------------------------------- paths and kinds (issue 8 §6)

@pytest.fixture
def heavy_path(tmp_path):
    path = tmp_path / "heavy.nl"
    path.write_text(TEXT)
    return path


def test_load_takes_a_path_object(heavy_path):
    spec = nldsl.load(heavy_path)
    assert (spec.name, spec.source.filename) == ("heavy", str(heavy_path))


def test_compile_takes_a_path_object(tmp_path):
    from nldsl.library import stdlib_text

    path = tmp_path / "deltanet.nl"
    path.write_text(stdlib_text("deltanet"))
    assert nldsl.compile(path, dim=8).spec.source.filename == str(path)


def test_compile_of_an_optimizer_says_to_use_optimizer():
    with pytest.raises(nldsl.NLDSLError, match=r"adam is an optimizer; nldsl\.optimizer\(spec, "
                                                r"params\) compiles it"):
        nldsl.compile("adam")


def test_optimizer_takes_a_path_object(heavy_path):
    import torch

    opt = nldsl.optimizer(heavy_path, [torch.nn.Parameter(torch.zeros(2))])
    assert opt.spec.source.filename == str(heavy_path)


def test_optimizer_of_a_module_fails_at_construction_and_says_to_use_compile():
    import torch

    with pytest.raises(nldsl.NLDSLError, match=r"titans is a module.*nldsl\.compile"):
        nldsl.optimizer("titans", [torch.nn.Parameter(torch.zeros(2))], dim=8)


def test_the_deepest_spec_the_parser_accepts_runs_in_both_schedules():
    """What parses must not overflow the stack in any later stage (issue 8 §3)."""
    import torch

    from nldsl.language.parser import max_depth

    terms = max_depth() - 10
    text = ("optimizer s(lr = 0.1 > 0) {\n  level w every 1 step {\n"
            f"    W <- W - lr * ({' + '.join(['grad(W)'] * terms)})\n  }}\n}}\n")
    spec = nldsl.load(text)
    for schedule in ("reference", "fused"):
        param = torch.nn.Parameter(torch.ones(3))
        param.grad = torch.full((3,), 0.5)
        nldsl.optimizer(spec, [param], schedule).step()
        assert torch.allclose(param.detach(), torch.full((3,), 1 - 0.1 * 0.5 * terms))
