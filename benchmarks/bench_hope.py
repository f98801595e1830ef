"""Hope: its self-modifying levels in the snapshot chunk form and its CMS blocks in the frozen
form (the chunked schedule) against the reference schedule, both as one module call.

    .venv/bin/python benchmarks/bench_hope.py [--batch 2] [--tokens 1024] [--ref-tokens 128]
        [--ref-tokens-bwd 64] [--dim 256] [--chunk-projections 16] [--chunk-memory 64]
        [--reps 3] [--threads 1]

One process, flush-to-zero on, glibc's freed blocks kept mapped for every contender
(bench_modules.keep_freed_memory), CPU time per call (time.process_time: the host is shared),
median over `reps` round-robin rounds after one untimed call each; tokens/s = B * T / median.
Forward under torch.no_grad, forward+backward as y.sum().backward() through the in-context
writes (both self-modifying levels are `backprop`). A module call is the deployed forward
pass: the self-modifying memories write as they read, the CMS blocks are constant within it
(they learn through nldsl.stream, at their periods). The reference runs at shorter lengths
(its work is linear in T, one Python iteration per token).
"""
from __future__ import annotations

import argparse

import torch

from bench_atlas import rates_line
from bench_modules import keep_freed_memory

import nldsl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, default in (("batch", 2), ("tokens", 1024), ("ref-tokens", 128),
                          ("ref-tokens-bwd", 64), ("dim", 256), ("chunk-projections", 16),
                          ("chunk-memory", 64), ("reps", 3), ("threads", 1)):
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    kept = keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    hp = dict(dim=args.dim, chunk_projections=args.chunk_projections,
              chunk_memory=args.chunk_memory)
    torch.manual_seed(0)
    chunked = nldsl.compile("hope", schedule="chunked", **hp)
    reference = nldsl.compile("hope", schedule="reference", **hp)
    reference.load_state_dict(chunked.state_dict())
    assert set(chunked.fast_paths) == {"projections", "memory", "cms_slow", "cms_mid", "cms_fast"}
    x = torch.randn(args.batch, args.tokens, args.dim)                   # [B, T, dim]
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU time, freed memory kept: "
          f"{kept}; hope B {args.batch}, dim {args.dim}, chunks {args.chunk_projections}/"
          f"{args.chunk_memory}, median of {args.reps}")
    for backward, short in ((False, args.ref_tokens), (True, args.ref_tokens_bwd)):
        group = {f"chunked T {args.tokens}": lambda: chunked(x)[0],
                 f"chunked T {short}": lambda short=short: chunked(x[:, :short])[0],
                 f"reference T {short}": lambda short=short: reference(x[:, :short])[0]}
        (_, same, last), line = rates_line(group, args.reps, backward, args.batch)
        print(f"{line}  chunked / reference at T {short}: {same / last:.2f}x", flush=True)


if __name__ == "__main__":
    main()
