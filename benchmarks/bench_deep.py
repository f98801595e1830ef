"""Deep memories: nldsl's `titans` and `titans_pytorch` (chunked schedule) beside
titans_pytorch.NeuralMemory.

    .venv/bin/python benchmarks/bench_deep.py [--batch 2] [--tokens 1024] [--chunks 64 16]
        [--reps 5] [--threads 2] [--cpu-time] [--keep-freed-memory] [--json out.json]

One process, flush-to-zero on (torch.set_flush_denormal(True): decaying fast weights turn
subnormal), 2 threads. dim 256, 4 heads of 64, as issue 10 §4 asks. Per chunk size, forward
(no_grad) and forward+backward (y.sum().backward()), tokens/s = batch * tokens / median call:

  nldsl titans          nldsl.compile("titans", schedule="chunked"): the paper's semantics
                        (every chunk's gradients at the previous chunk's end state, per-token
                        momentum and decay, reads of the token's own write), a conv + SiLU
                        block around it
  nldsl titans_pytorch  nldsl.compile("titans_pytorch", schedule="chunked", chunk_size=C):
                        the library's semantics exactly (tests/test_titans_pytorch_compat.py),
                        through the periodic form of its `once` level
  nldsl titans_pytorch batch_size=64   the same with batch_size=64
  peer default          NeuralMemory(dim=256, heads=4, dim_head=64, chunk_size=C): every
                        chunk's gradient at the learned initial weights
  peer batch_size=64    the same with batch_size=64: gradients at the last 64-token boundary,
                        which like the paper learns across chunks

`--keep-freed-memory` keeps glibc's freed blocks mapped (bench_modules.keep_freed_memory, as
jemalloc or tcmalloc would), for all contenders alike: on this VM a page fault is expensive, and
every fresh multi-megabyte temporary otherwise faults in its pages on every call.
Contenders are timed round-robin (bench_modules.time_group) so drift of the host hits them
alike (`--cpu-time`: CPU seconds by time.process_time, best of the rounds, and the peak in
CPU seconds too, for a loaded host; use it with --threads 1); "util" = matmul FLOPs counted on
one call / median time / peak fp32 GEMM (1024^3 mm).
When titans_pytorch is not installed the peer rows say so and only nldsl is timed.

`--miras` times the derived-memory chunk form instead (module/derived_chunk.py, one chunk size,
the first of --chunks): nldsl moneta and memora chunked beside their reference schedule (the
token loop, at --reference-tokens: its backward keeps every token's weights, ~13 GB at T 1024,
and its cost per token does not depend on T) and titans' deep chunk form, tokens/s each at its
own length; use it with --cpu-time --threads 1.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings

import torch

from bench_modules import forward, keep_freed_memory, peak_gemm, time_group

import nldsl


def backward(fn):
    def call():
        y = fn()
        (y[0] if isinstance(y, tuple) else y).sum().backward()
    return call


def cpu_group(contenders: dict, reps: int, warmup: int) -> dict[str, dict]:
    """time_group's rounds in CPU seconds (time.process_time), best of `reps`: what a loaded
    host's other jobs change least. "median_s" holds the best, for the report's columns."""
    return time_group(contenders, reps, warmup, clock=time.process_time, summary=min)


def cpu_peak_gemm(n: int = 1024, samples: int = 5) -> float:
    """The best GFLOP/s of an fp32 n^3 mm in CPU seconds, for --cpu-time's util."""
    import time
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(samples):
        start = time.process_time()
        for _ in range(10):
            a @ b
        best = max(best, 10 * 2 * n ** 3 / (time.process_time() - start) / 1e9)
    return best


def contenders(args, chunk: int, x: torch.Tensor) -> dict:
    torch.manual_seed(0)
    ours = nldsl.compile("titans", schedule="chunked", dim=256, heads=4, head_dim=64,
                         chunk_size=chunk)
    assert ours.fast_paths, "titans must take the deep chunk form"
    found = {"nldsl titans": lambda: ours(x)}
    for batch_size, name in ((0, "nldsl titans_pytorch"), (64, "nldsl titans_pytorch batch_size=64")):
        copy = nldsl.compile("titans_pytorch", schedule="chunked", dim=256, heads=4, head_dim=64,
                             chunk_size=chunk, batch_size=batch_size)
        assert copy.fast_paths, "titans_pytorch must take the periodic form"
        found[name] = lambda copy=copy: copy(x)
    try:
        from titans_pytorch import NeuralMemory
    except ImportError:
        print("titans_pytorch is not installed (pip install titans-pytorch==0.5.5): peers skipped")
        return found
    peer = NeuralMemory(dim=256, heads=4, dim_head=64, chunk_size=chunk)
    peer64 = NeuralMemory(dim=256, heads=4, dim_head=64, chunk_size=chunk, batch_size=64)
    found["peer default"] = lambda: peer(x)
    found["peer batch_size=64"] = lambda: peer64(x)
    return found


def miras(args, x: torch.Tensor) -> None:
    """The --miras table: tokens/s of each contender at its own length, fwd and fwd+bwd."""
    chunk, short = args.chunks[0], x[:, :args.reference_tokens]
    found = {}
    for spec in ("moneta", "memora", "titans"):
        for schedule, data in (("chunked", x), ("reference", short)):
            if spec == "titans" and schedule == "reference":
                continue
            torch.manual_seed(0)
            m = nldsl.compile(spec, schedule=schedule, dim=256, heads=4, head_dim=64,
                              chunk_size=chunk)
            assert schedule == "reference" or m.fast_paths, f"{spec} must take a chunk form"
            found[f"nldsl {spec} {schedule}"] = (lambda m=m, data=data: m(data), data.shape[1])
    timer = cpu_group if args.cpu_time else time_group
    print(f"\n{platform.processor() or 'cpu'}, torch {torch.__version__}, {args.threads} threads; "
          f"B {args.batch}, dim 256, 4 heads of 64, chunk {chunk}; "
          f"{'CPU' if args.cpu_time else 'wall'} seconds, best of {args.reps}")
    print(f"{'mode':<8} {'contender':<26} {'T':>5} {'ms':>10} {'tok/s':>9}")
    rates = {}
    for mode, wrap in (("fwd", forward), ("fwd+bwd", backward)):
        timed = timer({name: wrap(fn) for name, (fn, _) in found.items()}, args.reps, 2)
        for name, r in timed.items():
            tokens = found[name][1]
            rates[(mode, name)] = args.batch * tokens / r["median_s"]
            print(f"{mode:<8} {name:<26} {tokens:>5} {r['median_s'] * 1e3:>10.1f} "
                  f"{rates[(mode, name)]:>9,.0f}")
    for mode in ("fwd", "fwd+bwd"):
        for spec in ("moneta", "memora"):
            ours = rates[(mode, f"nldsl {spec} chunked")]
            print(f"  {mode}: {spec} chunked / reference = "
                  f"{ours / rates[(mode, f'nldsl {spec} reference')]:.1f}x, / titans chunked = "
                  f"{ours / rates[(mode, 'nldsl titans chunked')]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--chunks", type=int, nargs="+", default=[64, 16])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpu-time", action="store_true",
                        help="CPU seconds (time.process_time), best of the rounds")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="keep freed heap blocks mapped, for every contender (see above)")
    parser.add_argument("--json")
    parser.add_argument("--miras", action="store_true",
                        help="moneta and memora: chunked vs reference vs titans (see above)")
    parser.add_argument("--reference-tokens", type=int, default=128)
    args = parser.parse_args()
    kept = keep_freed_memory() if args.keep_freed_memory else False
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    peak_of = cpu_peak_gemm if args.cpu_time else (lambda: peak_gemm()[0])
    peak = peak_of()
    x = torch.randn(args.batch, args.tokens, 256)
    if args.miras:
        return miras(args, x)
    rows = []
    for chunk in args.chunks:
        group = contenders(args, chunk, x)
        for mode, wrap in (("fwd", forward), ("fwd+bwd", backward)):
            timer = cpu_group if args.cpu_time else time_group
            timed = timer({name: wrap(fn) for name, fn in group.items()}, args.reps, 2)
            for name, r in timed.items():
                rows.append(dict(chunk=chunk, mode=mode, contender=name, median_s=r["median_s"],
                                 tok_s=args.batch * args.tokens / r["median_s"],
                                 util=r["flops"] / r["median_s"] / (peak * 1e9)))
    peak = max(peak, peak_of())
    print(f"\n{platform.processor() or 'cpu'}, torch {torch.__version__}, {args.threads} threads, "
          f"peak {peak:.0f} GFLOP/s; B {args.batch}, T {args.tokens}, dim 256, 4 heads of 64; "
          f"freed memory kept: {kept}")
    print(f"{'chunk':>5} {'mode':<8} {'contender':<34} {'ms':>10} {'tok/s':>9} {'util':>6}")
    at = {}
    for r in rows:
        at[(r["chunk"], r["mode"], r["contender"])] = r["tok_s"]
        print(f"{r['chunk']:>5} {r['mode']:<8} {r['contender']:<34} {r['median_s'] * 1e3:>10.1f} "
              f"{r['tok_s']:>9,.0f} {100 * r['util']:>5.1f}%")
    for (chunk, mode, name), rate in at.items():
        if name.startswith("peer"):
            print(f"  chunk {chunk} {mode}: nldsl titans / {name} = "
                  f"{at[(chunk, mode, 'nldsl titans')] / rate:.2f}x")
    for ours, peer in (("nldsl titans_pytorch", "peer default"),
                       ("nldsl titans_pytorch batch_size=64", "peer batch_size=64")):
        for chunk in args.chunks:
            for mode in ("fwd", "fwd+bwd"):
                if (chunk, mode, peer) in at:
                    print(f"  chunk {chunk} {mode}: {ours} / {peer} = "
                          f"{at[(chunk, mode, ours)] / at[(chunk, mode, peer)]:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(peak_gflops=peak, argv=sys.argv, freed_memory_kept=kept, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
