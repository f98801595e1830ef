"""Atlas: the chain chunk form (module/chain_chunk.py) against the reference schedule.

    .venv/bin/python benchmarks/bench_atlas.py [--batch 2] [--tokens 1024] [--ref-tokens 256]
        [--ref-tokens-bwd 128] [--dim 256] [--heads 4] [--head-dim 64] [--chunk 64]
        [--window 16] [--reps 3] [--threads 1]

One process, flush-to-zero on, glibc's freed blocks kept mapped for every contender
(bench_modules.keep_freed_memory), CPU time per call (time.process_time: the host is shared),
median over `reps` round-robin rounds after one untimed call each; tokens/s = B * T / median.
Forward under torch.no_grad, forward+backward as y.sum().backward() (gradients of every
parameter through the inner updates, backprop level). The contenders are
nldsl.compile("atlas", ...) with the same parameters: `chunked` at T = --tokens and at the
reference's length, `reference` (the per-token interpreter) at T = --ref-tokens (forward) and
--ref-tokens-bwd (forward+backward): both schedules' work is linear in T, and the reference keeps
~23 MB per token position (B 2) for its backward pass at these sizes (the chunked form ~12 MB:
24 and 12 GB at T 1024), more than this machine has. The chunked forward+backward at
T = --tokens therefore runs with `checkpoint=True` (per-chunk recomputation: ~7 MB saved per
256 tokens).
"""
from __future__ import annotations

import argparse

import torch

from bench_modules import cpu_times, keep_freed_memory

import nldsl


def timed(group: dict, reps: int, backward: bool) -> dict[str, float]:
    """Median CPU seconds per call of each contender (with `backward`, of its output's sum's
    backward too), round-robin after one untimed call (bench_modules.cpu_times)."""
    if backward:
        group = {name: (lambda fn=fn: fn().sum().backward()) for name, fn in group.items()}
    return cpu_times(group, reps, grad=backward)


def rates_line(group: dict, reps: int, backward: bool, batch: int) -> tuple[list[float], str]:
    """Each contender's tokens/s (its name ends with its T) and a printed line of its median
    seconds and rate, in the group's order (`timed`)."""
    medians = timed(group, reps, backward)
    rates = {name: batch * int(name.split()[-1]) / seconds for name, seconds in medians.items()}
    line = "  ".join(f"{name}: {medians[name]:7.2f} s {rates[name]:7,.0f} tok/s" for name in group)
    return list(rates.values()), f"{'fwd+bwd' if backward else 'fwd':8} {line}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, default in (("batch", 2), ("tokens", 1024), ("ref-tokens", 256),
                          ("ref-tokens-bwd", 128), ("dim", 256),
                          ("heads", 4), ("head-dim", 64), ("chunk", 64), ("window", 16),
                          ("reps", 3), ("threads", 1)):
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    kept = keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    hp = dict(dim=args.dim, heads=args.heads, head_dim=args.head_dim, chunk_size=args.chunk,
              window_size=args.window)
    torch.manual_seed(0)
    chunked = nldsl.compile("atlas", schedule="chunked", **hp)
    reference = nldsl.compile("atlas", schedule="reference", **hp)
    reference.load_state_dict(chunked.state_dict())
    assert chunked.fast_paths and not reference.fast_paths
    kept_chunks = nldsl.compile("atlas", schedule="chunked", checkpoint=True, **hp)
    kept_chunks.load_state_dict(chunked.state_dict())
    x = torch.randn(args.batch, args.tokens, args.dim)                   # [B, T, dim]
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU time, freed memory kept: "
          f"{kept}; B {args.batch}, dim {args.dim}, {args.heads} heads of {args.head_dim}, "
          f"chunk {args.chunk}, window {args.window}, median of {args.reps}")
    for backward, short in ((False, args.ref_tokens), (True, args.ref_tokens_bwd)):
        long = kept_chunks if backward else chunked
        group = {f"chunked{' checkpoint' if backward else ''} T {args.tokens}":
                 lambda: long(x)[0],
                 f"chunked T {short}": lambda: chunked(x[:, :short])[0],
                 f"reference T {short}": lambda: reference(x[:, :short])[0]}
        (first, _, last), line = rates_line(group, args.reps, backward, args.batch)
        print(f"{line}  chunked / reference {first / last:.2f}x", flush=True)


if __name__ == "__main__":
    main()
