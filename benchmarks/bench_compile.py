"""torch.compile on the chunked schedule: a compiled module against the same module eager.

    .venv/bin/python benchmarks/bench_compile.py [--specs deltanet gated_deltanet titans]
        [--batch 2] [--tokens 1024] [--dim 256] [--reps 5] [--threads 2] [--backward]
        [--device cpu]

One process, flush-to-zero on, glibc's freed blocks kept mapped, median of `reps` calls after
two untimed ones (wall time on a GPU, synchronised; CPU time of the process on a CPU, the host
being shared). `torch.compile(module)` with its defaults (inductor); the first call's time is
reported as the compile time. The inner gradients of the deep and snapshot forms run eagerly
inside the compiled module (torch.compiler.disable: an inner torch.autograd.grad in a traced
graph would lose the tensors it differentiates). The largest difference of the outputs says
the compiled module computes the same function (to rounding: inductor fuses and reorders).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bench_modules import keep_freed_memory

import nldsl


def timed(fn, reps: int, device: str) -> float:
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    clock = time.perf_counter if device == "cuda" else time.process_time
    for _ in range(2):
        fn()
    sync()
    samples = []
    for _ in range(reps):
        start = clock()
        fn()
        sync()
        samples.append(clock() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--specs", nargs="+", default=["deltanet", "gated_deltanet", "titans"])
    for name, default in (("batch", 2), ("tokens", 1024), ("dim", 256), ("reps", 5),
                          ("threads", 2)):
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--backward", action="store_true", help="time y.sum().backward() too")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    kept = keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    print(f"torch {torch.__version__}, {args.device}, {args.threads} thread(s), freed memory "
          f"kept: {kept}; B {args.batch}, T {args.tokens}, dim {args.dim}, median of {args.reps}")
    for spec in args.specs:
        torch.manual_seed(0)
        eager = nldsl.compile(spec, schedule="chunked", dim=args.dim).to(args.device)
        compiled = torch.compile(eager)
        x = torch.randn(args.batch, args.tokens, args.dim, device=args.device)   # [B, T, dim]
        modes = [("fwd", torch.no_grad)] + ([("fwd+bwd", torch.enable_grad)] if args.backward
                                            else [])
        for mode, grad in modes:
            call = (lambda m: m(x)[0].sum().backward()) if mode == "fwd+bwd" else \
                (lambda m: m(x)[0])
            with grad():
                start = time.perf_counter()
                call(compiled)
                first = time.perf_counter() - start
                t_eager, t_compiled = (timed(lambda m=m: call(m), args.reps, args.device)
                                       for m in (eager, compiled))
                with torch.no_grad():
                    diff = (eager(x)[0] - compiled(x)[0]).abs().max().item()
            print(f"{spec:16} {mode:8} eager {t_eager * 1e3:8.1f} ms  compiled "
                  f"{t_compiled * 1e3:8.1f} ms  eager / compiled {t_eager / t_compiled:5.2f}x  "
                  f"first call {first:6.1f} s  max |y diff| {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
