"""Deep memories: nldsl's `titans` (chunked schedule) beside titans_pytorch.NeuralMemory.

    .venv/bin/python benchmarks/bench_deep.py [--batch 2] [--tokens 1024] [--chunks 64 16]
        [--reps 5] [--threads 2] [--keep-freed-memory] [--json out.json]

One process, flush-to-zero on (torch.set_flush_denormal(True): decaying fast weights turn
subnormal), 2 threads. dim 256, 4 heads of 64, as issue 10 §4 asks. Per chunk size, forward
(no_grad) and forward+backward (y.sum().backward()), tokens/s = batch * tokens / median call:

  nldsl titans          nldsl.compile("titans", schedule="chunked"): the paper's semantics
                        (every chunk's gradients at the previous chunk's end state, per-token
                        momentum and decay, reads of the token's own write), a conv + SiLU
                        block around it
  peer default          NeuralMemory(dim=256, heads=4, dim_head=64, chunk_size=C): every
                        chunk's gradient at the learned initial weights
  peer batch_size=64    the same with batch_size=64: gradients at the last 64-token boundary,
                        which like the paper learns across chunks

`--keep-freed-memory` keeps glibc's freed blocks mapped (bench_modules.keep_freed_memory, as
jemalloc or tcmalloc would), for all contenders alike: on this VM a page fault is expensive, and
every fresh multi-megabyte temporary otherwise faults in its pages on every call.
Contenders are timed round-robin (bench_modules.time_group) so drift of the host hits them
alike; "util" = matmul FLOPs counted on one call / median time / peak fp32 GEMM (1024^3 mm).
When titans_pytorch is not installed the peer rows say so and only nldsl is timed.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import warnings

import torch

from bench_modules import forward, keep_freed_memory, peak_gemm, time_group

import nldsl


def backward(fn):
    def call():
        y = fn()
        (y[0] if isinstance(y, tuple) else y).sum().backward()
    return call


def contenders(args, chunk: int, x: torch.Tensor) -> dict:
    torch.manual_seed(0)
    ours = nldsl.compile("titans", schedule="chunked", dim=256, heads=4, head_dim=64,
                         chunk_size=chunk)
    assert ours.fast_paths, "titans must take the deep chunk form"
    found = {"nldsl titans": lambda: ours(x)}
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--chunks", type=int, nargs="+", default=[64, 16])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="keep freed heap blocks mapped, for every contender (see above)")
    parser.add_argument("--json")
    args = parser.parse_args()
    kept = keep_freed_memory() if args.keep_freed_memory else False
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    peak = peak_gemm()[0]
    x = torch.randn(args.batch, args.tokens, 256)
    rows = []
    for chunk in args.chunks:
        group = contenders(args, chunk, x)
        for mode, wrap in (("fwd", forward), ("fwd+bwd", backward)):
            timed = time_group({name: wrap(fn) for name, fn in group.items()}, args.reps, 2)
            for name, r in timed.items():
                rows.append(dict(chunk=chunk, mode=mode, contender=name, median_s=r["median_s"],
                                 tok_s=args.batch * args.tokens / r["median_s"],
                                 util=r["flops"] / r["median_s"] / (peak * 1e9)))
    peak = max(peak, peak_gemm()[0])
    print(f"\n{platform.processor() or 'cpu'}, torch {torch.__version__}, {args.threads} threads, "
          f"peak {peak:.0f} GFLOP/s; B {args.batch}, T {args.tokens}, dim 256, 4 heads of 64; "
          f"freed memory kept: {kept}")
    print(f"{'chunk':>5} {'mode':<8} {'contender':<20} {'median ms':>10} {'tok/s':>9} {'util':>6}")
    at = {}
    for r in rows:
        at[(r["chunk"], r["mode"], r["contender"])] = r["tok_s"]
        print(f"{r['chunk']:>5} {r['mode']:<8} {r['contender']:<20} {r['median_s'] * 1e3:>10.1f} "
              f"{r['tok_s']:>9,.0f} {100 * r['util']:>5.1f}%")
    for (chunk, mode, name), rate in at.items():
        if name != "nldsl titans":
            print(f"  chunk {chunk} {mode}: nldsl titans / {name} = "
                  f"{at[(chunk, mode, 'nldsl titans')] / rate:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(peak_gflops=peak, argv=sys.argv, freed_memory_kept=kept, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
