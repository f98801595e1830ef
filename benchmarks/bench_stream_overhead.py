"""Per-segment overhead of nldsl.stream: the program walks once per module against once per call.

    .venv/bin/python benchmarks/bench_stream_overhead.py [--reps 25] [--threads 1]

One process, flush-to-zero on, CPU time per call (time.process_time: the host is shared), the
two contenders interleaved (one call each per round) after one untimed call each, medians:

  cached      the modules as compiled: `m.call_plan` (run order, chunk cuts, snapshot reads)
              and `m.recordable` computed once, at construction
  per call    the same modules with the plan walked again on every module call (run_chunked
              wrapped to compute it) and the recordable states found again on every stream
              call, as before they were cached

Cases: a training step of benchmarks/train_table.py's shape (nldsl.lm("hope", vocab 8, dim 32,
depth 2, periods 4/8/16), nldsl.stream then .sum().backward(), B 32, T 12: 6 block calls), and
bench_cms_online.py's four-level CMS at periods 1/4/32/128 under torch.no_grad (one-token
segments, B 2, T 32; dim 256 as there, and dim 8, where the arithmetic is small and the
overhead shows), per token.
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from bench_cms_online import cms4_spec, inner

import nldsl
from nldsl.module import module as compiled_module, task_recorded, taskgrad
from nldsl.module.chunked import call_plan

CACHED = task_recorded.recordable, compiled_module.run_chunked


def run_chunked_per_call(program, params, x, state, end, forms, block, checkpoint, plan):
    """run_chunked as it was: the program walked for its plan on every call."""
    return CACHED[1](program, params, x, state, end, forms, block, checkpoint,
                     call_plan(program))


def recordable_per_call(blocks: dict, levels) -> dict:
    """task_recorded.recordable as it was: taskgrad.recordable walked on every stream call."""
    return {id(tl): {name: tl.level.states[name].mlp for name in taskgrad.recordable(
        blocks[tl.block].program, tl.level, blocks[tl.block].fast_paths)} for tl in levels}


def cases() -> list[tuple[str, object, int]]:
    """(name, one call, tokens per call to divide by)."""
    torch.manual_seed(0)
    hope = nldsl.lm("hope", vocab_size=8, dim=32, depth=2, period_fast=4, period_mid=8,
                    period_slow=16)
    inputs, targets = torch.randint(0, 8, (32, 12)), torch.randint(0, 8, (32, 12))  # [B, T]

    def step():
        y, _ = nldsl.stream(hope, inputs, targets)
        y.sum().backward()
    found = [("hope lm training step, ms per step", step, 1)]
    for dim in (256, 8):
        cms = nldsl.compile(cms4_spec(), dim=dim, expansion=4, period_1=1, period_2=4,
                            period_3=32, period_4=128)
        x = torch.randn(2, 32, dim)                                        # [B, T, dim]
        teach = torch.randn(2, 32, dim) * 1e-3                             # [B, T, dim]

        def call(cms=cms, x=x, teach=teach):
            with torch.no_grad():
                nldsl.stream(cms, x, teach, loss=inner)
        found.append((f"cms4 1/4/32/128 dim {dim}, ms per token", call, 32))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU time, medians of {args.reps}")
    for name, fn, tokens in cases():
        def use(per_call: bool) -> None:
            compiled_module.run_chunked = run_chunked_per_call if per_call else CACHED[1]
            task_recorded.recordable = recordable_per_call if per_call else CACHED[0]
        times = {False: [], True: []}
        try:
            for per_call in times:
                use(per_call)
                fn()
            for _ in range(args.reps):
                for per_call in times:
                    use(per_call)
                    start = time.process_time()
                    fn()
                    times[per_call].append((time.process_time() - start) * 1e3 / tokens)
        finally:
            use(False)
        cached, walked = (statistics.median(times[k]) for k in (False, True))
        print(f"{name}: per call {walked:.2f}, cached {cached:.2f}, "
              f"per call / cached {walked / cached:.3f}", flush=True)


if __name__ == "__main__":
    main()
