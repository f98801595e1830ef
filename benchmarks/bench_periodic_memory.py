"""Memory held for the backward pass by the periodic form (module/periodic_chunk.py), without
and with `checkpoint=True`, on titans_pytorch.

    .venv/bin/python benchmarks/bench_periodic_memory.py [--checkpoint] [--tokens 1024]
        [--batch-size 0] [--dim 256] [--heads 4] [--chunk 64] [--batch 2] [--block 64]

One configuration per process (the peak RSS is the process's), 1 thread, float32, after one
warm-up call of two periods. Held for backward, each storage counted once: what autograd saves
outside the checkpointed regions (torch.autograd.graph.saved_tensors_hooks), the arguments each
region's `checkpoint` holds (start states and momentum), and what torch's checkpoint recomputed
during the forward pass for the inner backward and keeps until the backward pass (read from its
private _CheckpointFrame objects). Also the growth of the peak RSS over forward and backward,
and their CPU time.
"""
from __future__ import annotations

import argparse
import gc
import resource
import time

import torch
from torch.utils.checkpoint import _CheckpointFrame

import nldsl
import nldsl.module.periodic_chunk as periodic_chunk


def count(where: dict, t: torch.Tensor) -> torch.Tensor:
    storage = t.untyped_storage()
    where[storage.data_ptr()] = storage.nbytes()
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", action="store_true")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=0)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--block", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    m = nldsl.compile("titans_pytorch", dim=args.dim, heads=args.heads,
                      head_dim=args.dim // args.heads, chunk_size=args.chunk,
                      batch_size=args.batch_size, block_size=args.block,
                      checkpoint=args.checkpoint)
    x = torch.randn(args.batch, args.tokens, args.dim)
    m(x[:, :2 * args.chunk])[0].sum().backward()                               # warm-up
    saved, held, recomputed, checkpoint = {}, {}, {}, periodic_chunk.checkpoint

    def recording(region, *inputs, **kwargs):
        for arg in inputs:
            for t in arg if isinstance(arg, tuple) else (arg,):
                if isinstance(t, torch.Tensor):
                    count(held, t)
        return checkpoint(region, *inputs, **kwargs)

    periodic_chunk.checkpoint = recording
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.process_time()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: count(saved, t), lambda t: t):
        y, _ = m(x)
    for frame in (o for o in gc.get_objects() if isinstance(o, _CheckpointFrame)):
        for tensors in frame.recomputed.values():
            for t in tensors.values():
                count(recomputed, t)
    y.square().mean().backward()
    seconds = time.process_time() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before          # KiB
    mb = lambda d: sum(d.values()) / 1e6
    print(f"checkpoint={args.checkpoint} T={args.tokens} chunk_size={args.chunk} "
          f"batch_size={args.batch_size}: held {mb(saved) + mb(held) + mb(recomputed):.1f} MB "
          f"(saved {mb(saved):.1f}, checkpoint inputs {mb(held):.1f}, recomputed in the "
          f"forward {mb(recomputed):.1f}), peak RSS growth {peak / 1e3:.0f} MB, fwd+bwd CPU "
          f"{seconds:.2f} s (with the counting hooks)")


if __name__ == "__main__":
    main()
