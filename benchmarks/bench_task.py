"""Levels that learn from the task loss: nldsl.stream's online CMS against the frozen network.

    .venv/bin/python benchmarks/bench_task.py [--batch 2] [--tokens 256] [--dim 64] [--depth 2]
        [--vocab 256] [--expansion 2] [--reps 3] [--threads 1] [--spec cms]
        [--periods 32,4,1 32,16,4 128,32,4]

`cms` (sequential, eqs. 70-71; `--spec cms_nested`: eq. 72, `cms_independent`: eq. 74) as the
block of nldsl.lm, with next-token cross-entropy as the task loss. Per list of periods (slow,
mid, fast): tokens/s = batch * tokens / median CPU time per call of

  online      nldsl.stream(model, inputs, targets) under torch.no_grad (test-time learning:
              one forward and one backward of the network per segment; a segment ends at the
              next write of any CMS level, so period 1 means one segment per token)
  frozen      model(inputs): the same network with the CMS levels frozen (learn=False)

and the segment count. One process, float32, `--threads` torch threads, flush-to-zero on, glibc's
freed blocks kept mapped (bench_modules.keep_freed_memory); CPU time of this process
(time.process_time: the host is shared, so wall time measures the neighbours).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench_modules import keep_freed_memory

import nldsl
from nldsl.module.task import _cuts, task_levels


def median_time(fn, reps: int) -> float:
    fn()
    samples = []
    for _ in range(reps):
        start = time.process_time()
        fn()
        samples.append(time.process_time() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--expansion", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--spec", default="cms", choices=["cms", "cms_nested", "cms_independent"])
    parser.add_argument("--periods", nargs="+", default=["32,4,1", "32,16,4", "128,32,4"])
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    stream = torch.randint(0, args.vocab, (args.batch, args.tokens + 1))
    inputs, targets = stream[:, :-1], stream[:, 1:]
    print(f"{args.spec} in nldsl.lm: dim {args.dim}, depth {args.depth}, vocab {args.vocab}, batch "
          f"{args.batch}, T {args.tokens}, {args.threads} thread(s)")
    print(f"{'periods':>12} {'segments':>9} {'online tok/s':>13} {'frozen tok/s':>13} {'ratio':>7}")
    for periods in args.periods:
        slow, mid, fast = (int(p) for p in periods.split(","))
        model = nldsl.lm(args.spec, vocab_size=args.vocab, dim=args.dim, depth=args.depth,
                         expansion=args.expansion, period_slow=slow, period_mid=mid,
                         period_fast=fast)
        segments = len(_cuts(task_levels(model), 0, args.tokens))
        with torch.no_grad():
            online = median_time(lambda: nldsl.stream(model, inputs, targets), args.reps)
            frozen = median_time(lambda: model(inputs), args.reps)
        n = args.batch * args.tokens
        print(f"{periods:>12} {segments:>9} {n / online:>13.0f} {n / frozen:>13.0f} "
              f"{frozen / online:>7.4f}")


if __name__ == "__main__":
    main()
