"""Atlas: the chain chunk form (module/chain_chunk.py) against the reference schedule.

    .venv/bin/python benchmarks/bench_atlas.py [--batch 2] [--tokens 1024] [--ref-tokens 256]
        [--dim 256] [--heads 4] [--head-dim 64] [--chunk 64] [--window 16] [--reps 3]
        [--threads 1]

One process, flush-to-zero on, glibc's freed blocks kept mapped for every contender
(bench_modules.keep_freed_memory), CPU time per call (time.process_time: the host is shared),
median over `reps` round-robin rounds after one untimed call each; tokens/s = B * T / median.
Forward under torch.no_grad, forward+backward as y.sum().backward() (gradients of every
parameter through the inner updates, backprop level). Both contenders are
nldsl.compile("atlas", ...) with the same parameters: `chunked` at T = --tokens (and at
--ref-tokens, so both are seen at one length), `reference` (the per-token interpreter) at
T = --ref-tokens, because at T 1024 one forward+backward of it takes minutes; both schedules'
work is linear in T.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench_modules import keep_freed_memory

import nldsl


def timed(group: dict, reps: int, backward: bool) -> dict[str, float]:
    """Median CPU seconds per call of each contender, round-robin after one untimed call."""
    def call(fn):
        if backward:
            fn().sum().backward()
        else:
            with torch.no_grad():
                fn()
    times = {name: [] for name in group}
    for fn in group.values():
        call(fn)
    for _ in range(reps):
        for name, fn in group.items():
            start = time.process_time()
            call(fn)
            times[name].append(time.process_time() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, default in (("batch", 2), ("tokens", 1024), ("ref-tokens", 256), ("dim", 256),
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
    x = torch.randn(args.batch, args.tokens, args.dim)                   # [B, T, dim]
    short = x[:, :args.ref_tokens]
    group = {f"chunked T {args.tokens}": lambda: chunked(x)[0],
             f"chunked T {args.ref_tokens}": lambda: chunked(short)[0],
             f"reference T {args.ref_tokens}": lambda: reference(short)[0]}
    tokens = {name: args.batch * int(name.split()[-1]) for name in group}
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU time, freed memory kept: "
          f"{kept}; B {args.batch}, dim {args.dim}, {args.heads} heads of {args.head_dim}, "
          f"chunk {args.chunk}, window {args.window}, median of {args.reps}")
    for backward in (False, True):
        medians = timed(group, args.reps, backward)
        rates = {name: tokens[name] / seconds for name, seconds in medians.items()}
        mode = "fwd+bwd" if backward else "fwd"
        line = "  ".join(f"{name}: {medians[name]:8.2f} s {rates[name]:8,.0f} tok/s"
                         for name in group)
        ratio = rates[f"chunked T {args.tokens}"] / rates[f"reference T {args.ref_tokens}"]
        print(f"{mode:8} {line}  chunked / reference {ratio:.2f}x", flush=True)


if __name__ == "__main__":
    main()
