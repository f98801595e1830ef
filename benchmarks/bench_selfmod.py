"""Self-modifying Titans: nldsl's `self_modifying_titans` (chunked schedule) beside
nested_learning's SelfModifyingTitans, forward with in-context updates, no autograd.

    .venv/bin/python benchmarks/bench_selfmod.py [--batch 2] [--tokens 256]
        [--chunks 8 64] [--reps 3] [--threads 1] [--reference] [--against FILE]
        [--json out.json]

dim 256 (issue 11 §4). CPU time per call (time.process_time: the host is shared and loaded, so
wall time measures the neighbours), median over `reps` round-robin rounds after one untimed
call each; tokens/s = batch * tokens / median. One thread, flush-to-zero on, glibc's freed
blocks kept mapped for every contender (bench_modules.keep_freed_memory).

  nldsl chunked       nldsl.compile("self_modifying_titans", chunk_projections=C_o,
                      chunk_memory=C_m): the snapshot chunk form (module/snapshot_chunk.py)
  nldsl reference     the token loop it is tested against (--reference: slow)
  nldsl against       --against FILE: the same module with FILE (another version of
                      nldsl/module/snapshot_chunk.py, e.g. from `git show REV:...`) as its
                      snapshot chunk form, for before/after comparisons in one process
  nested_learning     SelfModifyingTitans(chunk_size_other=C_o, chunk_size_memory=C_m,
                      use_skip=False).forward_with_updates(x, init_fast_state()), as
                      ../shared/bench/peers.py section `nl` part (b) drives it

The two are not the same function (nldsl: fixed q, learned initial states, eq. 88 with the
preconditioner on the previous token's weight; the peer: its own defaults), only the same
architecture and chunk sizes: the comparison is of speed. When nested_learning is not installed
the row says so and only nldsl is timed.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

import torch

from bench_modules import cpu_times, keep_freed_memory

import nldsl


def contenders(args, x: torch.Tensor) -> dict:
    chunk_other, chunk_memory = args.chunks
    torch.manual_seed(0)
    found = {}
    schedules = ("chunked", "reference") if args.reference else ("chunked",)
    for schedule in schedules:
        ours = nldsl.compile("self_modifying_titans", schedule=schedule, dim=256,
                             chunk_projections=chunk_other, chunk_memory=chunk_memory)
        if schedule == "chunked":
            assert ours.fast_paths, "self_modifying_titans must take the snapshot chunk form"
        found[f"nldsl {schedule}"] = lambda m=ours: m(x)
        if schedule == "chunked" and args.against:
            found["nldsl against"] = lambda m=ours: with_form(args.against, lambda: m(x))
    try:
        from nested_learning.titan.self_modifying import SelfModifyingTitans, \
            SelfModifyingTitansConfig
    except ImportError:
        print("nested_learning is not installed (pip install nested-learning==0.2.0): peer skipped")
        return found
    peer = SelfModifyingTitans(SelfModifyingTitansConfig(
        dim=256, chunk_size_other=chunk_other, chunk_size_memory=chunk_memory, use_skip=False))
    found["nested_learning"] = lambda: peer.forward_with_updates(x, peer.init_fast_state())
    return found


def with_form(path: str, call):
    """call() with module/chunked.py's snapshot chunk form taken from the file at `path`."""
    import importlib.util
    import nldsl.module.chunked as chunked
    if path not in _FORMS:
        spec = importlib.util.spec_from_file_location("snapshot_chunk_against", path)
        _FORMS[path] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_FORMS[path])
    kept = chunked.run_snapshot_level
    chunked.run_snapshot_level = _FORMS[path].run_snapshot_level
    try:
        return call()
    finally:
        chunked.run_snapshot_level = kept


_FORMS: dict = {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--chunks", type=int, nargs=2, default=[8, 64],
                        metavar=("OTHER", "MEMORY"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reference", action="store_true", help="time the token loop too")
    parser.add_argument("--against", help="another snapshot_chunk.py to time beside this one")
    parser.add_argument("--json")
    args = parser.parse_args()
    kept = keep_freed_memory()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    x = torch.randn(args.batch, args.tokens, 256)
    medians = cpu_times(contenders(args, x), args.reps)
    print(f"\ntorch {torch.__version__}, {args.threads} thread(s), CPU time; B {args.batch}, "
          f"T {args.tokens}, dim 256, chunks {args.chunks[0]}/{args.chunks[1]}; "
          f"freed memory kept: {kept}")
    rows = []
    for name, seconds in medians.items():
        rate = args.batch * args.tokens / seconds
        rows.append(dict(contender=name, median_cpu_s=seconds, tok_s=rate))
        print(f"  {name:<18} {seconds * 1e3:>10.1f} ms {rate:>10,.0f} tok/s")
    if "nested_learning" in medians:
        print(f"  nldsl chunked / nested_learning = "
              f"{medians['nested_learning'] / medians['nldsl chunked']:.1f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(argv=sys.argv, freed_memory_kept=kept, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
