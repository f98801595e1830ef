"""Optimizer step time: nldsl's compiled optimizers against torch.optim, side by side.

    .venv/bin/python benchmarks/bench_optim.py [--reps 15] [--sizes 10M 50M] [--muon-sizes 10M 50M]
        [--suites adam muon]

One process, contenders interleaved round-robin (one step each per round), medians reported,
flush-to-zero on. Models are stacks of LayerNorm + Linear(d, 4d) + Linear(4d, d) with random
gradients; only `optimizer.step()` is timed.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import nldsl

SIZES = {"2M": (128, 16), "10M": (512, 5), "50M": (1024, 6)}   # (d, blocks)


def model(d: int, blocks: int, bias: bool = True) -> torch.nn.Module:
    layers = []
    for _ in range(blocks):
        if bias:
            layers.append(torch.nn.LayerNorm(d))
        layers += [torch.nn.Linear(d, 4 * d, bias=bias), torch.nn.Linear(4 * d, d, bias=bias)]
    return torch.nn.Sequential(*layers)


def with_grads(net: torch.nn.Module) -> list[torch.nn.Parameter]:
    params = list(net.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2
    return params


def bench(contenders: dict, reps: int) -> dict[str, float]:
    times = {name: [] for name in contenders}
    for opt in contenders.values():
        opt.step()                                    # warm-up: state allocation, codegen
    for _ in range(reps):
        for name, opt in contenders.items():
            start = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def adam_contenders(d, blocks):
    make = lambda: with_grads(model(d, blocks))
    return {
        "nldsl adam (fused)": nldsl.optimizer("adam", make(), lr=1e-4),
        "torch Adam foreach=False": torch.optim.Adam(make(), lr=1e-4, foreach=False),
        "torch Adam foreach=True": torch.optim.Adam(make(), lr=1e-4, foreach=True),
        "torch Adam fused=True": torch.optim.Adam(make(), lr=1e-4, fused=True),
    }


def muon_contenders(d, blocks):
    make = lambda: with_grads(model(d, blocks, bias=False))
    return {
        "nldsl muon (fused)": nldsl.optimizer("muon", make(), lr=1e-3),
        "torch Muon": torch.optim.Muon(make(), lr=1e-3),
        "nldsl m3 (fused)": nldsl.optimizer("m3", make(), lr=1e-3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--sizes", nargs="+", default=["10M", "50M"], choices=list(SIZES))
    parser.add_argument("--muon-sizes", nargs="+", default=["10M"], choices=list(SIZES))
    parser.add_argument("--suites", nargs="+", default=["adam", "muon"], choices=["adam", "muon"])
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, reps {args.reps}")
    for suite, sizes, contenders, baseline in (
            ("adam", args.sizes, adam_contenders, "torch Adam fused=True"),
            ("muon", args.muon_sizes, muon_contenders, "torch Muon")):
        if suite not in args.suites:
            continue
        for size in sizes:
            d, blocks = SIZES[size]
            opts = contenders(d, blocks)
            count = sum(p.numel() for p in opts[next(iter(opts))].param_groups[0]["params"])
            result = bench(opts, args.reps)
            print(f"\n{suite} {size} ({count / 1e6:.1f}M parameters, d={d}, {blocks} blocks)")
            print(f"{'contender':28} {'median ms':>10} {'/ ' + baseline:>28}")
            for name, seconds in result.items():
                print(f"{name:28} {seconds * 1e3:10.2f} {seconds / result[baseline]:28.2f}")


if __name__ == "__main__":
    main()
