"""nldsl/module/show.py: `nldsl compile MODULE --show-code` prints the Program, with its head
steps and the stage of each context and read, indented by block."""
from __future__ import annotations

import pytest

from nldsl.cli import main
from nldsl.module import compile as compile_module
from nldsl.module.show import describe
from nldsl.spec import load

PERIODIC = """module periodic(dim: int >= 1, n = 3 >= 1) {
  state Wk : [dim, dim] = normal(0.02)
  level memory every n tokens chunk 6 {
    state M : [dim, dim] = 0
    key k = x @ Wk
    let own = M(k)
    minimize l2(M(k), own) by gd(lr = 0.1)
    read y = M(k) before write
  }
  out = y
}"""


def shown(spec, **given) -> str:
    module = compile_module(spec, **given)
    return describe(module.program, module.fast_paths,
                    {n: tuple(p.shape) for n, p in module.named_parameters()})


def block(text: str, header: str) -> list[str]:
    """The lines of the block under `header` (one level deeper than it)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == header)
    indent = len(lines[start]) - len(lines[start].lstrip()) + 4
    body = []
    for line in lines[start + 1:]:
        if not line.startswith(" " * indent):
            break
        body.append(line[indent:])
    return body


def test_deltanet_shows_its_head_steps_with_the_values_passed():
    text = shown("deltanet", dim=8, heads=2, head_dim=3)
    assert block(text, "# heads:") == [
        "# k: split into 2 heads, width 3 each", "# v: split into 2 heads, width 3 each",
        "# q: split into 2 heads, width 3 each", "# beta: split into 2 heads, one scalar each",
        "# y: merged from 2 heads to width 6 outside"]


def test_contexts_and_reads_show_their_stage():
    text = shown("deltanet", dim=8, heads=2, head_dim=3)
    contexts = block(text, "# every token, before the writes:")
    assert [line.split("    # ")[1] for line in contexts] == ["input: no state"] * 4
    assert block(text, "# reads:") == [
        "read y = rmsnorm(M(q)) * o_norm    # after write: sees M written; q from before the write"]


def test_a_periodic_chunked_level_shows_its_snapshot_and_pending_sum():
    text = shown(load(PERIODIC), dim=4)
    assert "level memory: every 3 tokens, chunk 6, writes detached, partial flush" in text
    assert "own = M(k)    # snapshot: sees M at the chunk start" in text
    assert "# the write (each token's change, summed; written at t = 3, 6, ...):" in text
    assert "read y = M(k)    # before write: sees M at the chunk start; k from before the write" \
        in text
    assert "# chunked schedule: no fast form, token by token" in text


def test_every_line_of_a_level_is_inside_its_block():
    text = shown("gated_deltanet", dim=8, heads=2, head_dim=3, head_v_dim=4)
    body = block(text, "level memory: every 1 tokens, chunk 1, 2 heads, backprop, partial flush")
    assert body[0] == "state M [4, 3] starts at 0"
    assert "# a = alpha" in [line.strip() for line in body]


def test_a_momentum_buffer_is_shown_as_the_rule_s_hidden_state():
    text = shown(load(PERIODIC.replace("every n tokens chunk 6", "every 1 token chunk 6")
                      .replace("gd(lr = 0.1)", "momentum(lr = 0.1, beta = 0.9)")), dim=4)
    assert "state M_momentum [4, 4] starts at 0    # the rule's hidden state" in text
    assert "M_momentum <- 0.9 * M_momentum - 0.1 * G" in text


@pytest.mark.parametrize("name", ["linear_attention", "deltanet", "gated_deltanet"])
def test_show_code_prints_the_module_and_its_kernel(name, capsys):
    assert main(["compile", name, "--show-code"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# module {name}: dim=8")
    assert "def linear_delta_blocks(" in out
    assert not any(line != line.rstrip() for line in out.splitlines())


def test_titans_shows_its_mlp_memory_and_its_deep_chunk_form():
    text = shown("titans", dim=8, heads=2, head_dim=3, chunk_size=4)
    assert "state M mlp 3 -> 12 -> 3 (gelu, residual): weights [12, 3], [3, 12], flat [72], " \
           "starts at M_init_w1.." in text
    assert "M <- (1 - alpha) * M + M_momentum    [momentum autograd]" in text
    form = block(text, "# chunked schedule: deep memory M, chunk form (momentum rule; all "
                       "gradients of a chunk at its start, one pass per chunk) with")
    assert form == ["# loss = l2(M(k), v)", "# lr = theta", "# decay = 1 - alpha", "# beta = eta",
                    "# clip = max_grad_norm"]
    assert "# the deep-memory chunk loop (nldsl/module/deep_chunk.py):" in text
    assert "linear_delta_blocks" not in text


def test_titans_pytorch_shows_its_periodic_form():
    text = shown("titans_pytorch", dim=8, heads=2, head_dim=3, chunk_size=4)
    form = block(text, "# chunked schedule: `once` memory M, periodic form (momentum rule; one "
                       "step per period from its summed gradients) with")
    assert form == ["# loss = theta * 2 / head_dim * l2(M(k), v)",
                    "# lr = 1    # at the period's last token",
                    "# decay = 1 - alpha    # at the period's last token",
                    "# beta = eta    # at the period's last token"]
    assert "# the periodic loop of a `once` level (nldsl/module/periodic_chunk.py):" in text
