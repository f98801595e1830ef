"""CMS online updates: nldsl.stream on a four-level CMS beside nested_learning's HOPE-Attention
block's CMS part, both writing their levels at periods 1/4/32/128 (issue 11 §4).

    .venv/bin/python benchmarks/bench_cms_online.py [--batch 2] [--tokens 128] [--dim 256]
        [--expansion 4] [--periods 1,4,32,128 16,64,256,1024] [--reps 3] [--threads 1]

dim 256, expansion 4, B 2, T 128 (T 1024 for 16/64/256/1024): ../shared/bench/peers.py section
`nl` part (e)'s sizes. CPU time per call (time.process_time: the host is shared and loaded),
median over `reps` round-robin rounds after one untimed call each; tokens/s = B * T / median.
One thread, flush-to-zero on, glibc's freed blocks kept mapped for both (bench_modules).

  nldsl        nldsl.stream(nldsl.compile(CMS4, period_1=.., ...), x, teach, loss=<y, teach>)
               under torch.no_grad: CMS4 is stdlib cms.nl with a fourth level, chained
               x -> period 1 -> period 4 -> period 32 -> period 128 (the peer's order). Every
               level writes eq. 71: at its period, the sum of its tokens' gd steps on the task
               loss L = sum_t <y_t, teach_t>, each gradient the true one through the levels
               after it, taken at the last written states.
  nested_learning
               HOPEAttentionBlock(cms_levels=1/4/32/128, cms_opt = deep_momentum as
               peers.py)._cms_forward_online_fast(x, fast_state, teach): its CMS part without
               the attention before it. Per chunk of the shortest period it runs the four
               blocks; at a level's period it re-runs that block on the buffered inputs and
               takes the gradient of sum ||pred - (pred.detach() - teach)||^2, i.e.
               2 <teach, d pred_level / d theta>: the teach signal at the level's own output
               (no path through the later levels), then its deep-momentum step.

Not the same function, only the same shape of work (four d -> 4d -> d residual GELU MLPs, the
same periods, one gradient per level per period): the peer's blocks add an input LayerNorm,
biases and an output norm clip; its step is deep momentum on a local loss, nldsl's is plain gd
on the network's loss. When nested_learning is not installed only nldsl is timed.
"""
from __future__ import annotations

import argparse
import warnings

import torch

from bench_modules import cpu_times, keep_freed_memory

import nldsl

LEVEL = """
  level l{i} every period_{i} tokens backprop partial flush {{
    state theta_{i} : mlp(dim -> expansion * dim -> dim, gelu, residual) init learned by outer
    minimize task by gd(lr = lr)
    read h_{i} = theta_{i}({source})
  }}
"""


def cms4_spec() -> str:
    """stdlib cms.nl's sequential chain with four levels: x -> h_1 -> h_2 -> h_3 -> h_4."""
    levels = "".join(LEVEL.format(i=i, source="x" if i == 1 else f"h_{i - 1}")
                     for i in range(1, 5))
    periods = ", ".join(f"period_{i} = 1 >= 1" for i in range(1, 5))
    return (f"module cms4(dim: int >= 1, expansion = 4 >= 1, {periods}, lr = 1e-3 >= 0) {{"
            f"{levels}\n  out = h_4\n}}\n")


def inner(y: torch.Tensor, teach: torch.Tensor) -> torch.Tensor:
    """The task loss whose gradient at y is the teach signal: sum_t <y_t, teach_t>."""
    return (y * teach).sum()


def contenders(args, periods: tuple[int, ...], x: torch.Tensor, teach: torch.Tensor) -> dict:
    torch.manual_seed(0)
    ours = nldsl.compile(cms4_spec(), dim=args.dim, expansion=args.expansion,
                         **{f"period_{i}": p for i, p in enumerate(periods, 1)})
    found = {"nldsl": lambda: nldsl.stream(ours, x, teach, loss=inner)}
    try:
        from nested_learning.fast_state import build_block_fast_state
        from nested_learning.hope.block import HOPEAttentionBlock, HOPEAttentionBlockConfig
        from nested_learning.levels import LevelSpec
    except ImportError:
        print("nested_learning is not installed (pip install nested-learning==0.2.0): peer skipped")
        return found
    opts = {"cms_opt": {"type": "deep_momentum", "lr": 3e-4,
                        "params": {"beta": 0.9, "beta2": 0.999, "variant": "nl_l2_precond"}}}
    levels = [LevelSpec(f"cms_{i}", p, optimizer_key="cms_opt") for i, p in enumerate(periods)]
    peer = HOPEAttentionBlock(HOPEAttentionBlockConfig(
        dim=args.dim, heads=4, cms_levels=levels, cms_hidden_multiplier=args.expansion,
        optimizer_configs=opts))

    def run_peer():
        state = build_block_fast_state(titan_module=None, cms_blocks=dict(peer.cms.blocks.items()),
                                       specs=levels, optimizer_configs=opts, default_lr=1e-3)
        return peer._cms_forward_online_fast(x, state, teach, None)
    found["nested_learning"] = run_peer
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=None,
                        help="default: 128, or 1024 when the shortest period is over 8")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--expansion", type=int, default=4)
    parser.add_argument("--periods", nargs="+", default=["1,4,32,128", "16,64,256,1024"])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    kept = keep_freed_memory()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU time; B {args.batch}, "
          f"dim {args.dim}, expansion {args.expansion}; freed memory kept: {kept}")
    for text in args.periods:
        periods = tuple(int(p) for p in text.split(","))
        tokens = args.tokens or (128 if min(periods) <= 8 else 1024)
        torch.manual_seed(1)
        x = torch.randn(args.batch, tokens, args.dim)                    # [B, T, dim]
        teach = torch.randn(args.batch, tokens, args.dim) * 1e-3         # [B, T, dim]
        medians = cpu_times(contenders(args, periods, x, teach), args.reps)
        line = [f"periods {text:>16} T {tokens:>5}:"]
        for name, seconds in medians.items():
            line.append(f"{name} {seconds * 1e3:9.1f} ms {args.batch * tokens / seconds:9,.0f} "
                        "tok/s")
        if "nested_learning" in medians:
            line.append(f"nldsl / nested_learning = "
                        f"{medians['nested_learning'] / medians['nldsl']:.2f}x")
        print("  ".join(line), flush=True)


if __name__ == "__main__":
    main()
