"""Stability of the deep memories over long sequences (issue 10 §3): finite or not, and how
large the fast state grows.

    .venv/bin/python benchmarks/bench_stability.py [--specs titans yaad ...] [--tokens 4096]
        [--segment 512] [--modes float32 bfloat16] [--backward] [--json out.json]
        [--hparam name=value ...] [--o1]

Each spec at small sizes (dim 64, heads 2, head_dim 32; self_modifying_titans has no heads)
with its default initialisation (or, --o1, every parameter redrawn O(1), as training may leave
them) and hyper-parameters (seed 0; --hparam overrides), B 1, x ~ N(0, 1), chunked
schedule (a spec without a fast form runs the reference token loop: slow). The sequence is fed
in segments of `--segment` tokens with the state carried (the same values as one call), so the
largest |entry| of every fast state can be printed after each segment; with --backward the
loss mean(y^2) is differentiated through the whole sequence (the graph spans the segments).
bfloat16 = torch.autocast("cpu", dtype=torch.bfloat16). Reported: whether y, the final state
and (with --backward) every parameter's gradient are finite, max |state| after the first
segment and at the end, and the largest |grad|.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import nldsl

SPECS = ("titans", "yaad", "moneta", "memora", "self_modifying_titans")


def sizes(spec: str) -> dict:
    return dict(dim=64) if spec == "self_modifying_titans" else dict(dim=64, heads=2, head_dim=32)


def tensors(state: dict):
    for level, own in state.items():
        if level == "_stream":
            continue
        for value in own.values():
            yield from (value if isinstance(value, tuple) else (value,))


def largest(state: dict) -> float:
    return max(float(v.detach().abs().max()) for v in tensors(state))


def redraw(m: torch.nn.Module) -> None:
    """Every parameter O(1), as training may leave them (tests/_module_cases.py's scales):
    matrices N(0, 1 / fan_in), vectors 1 + N(0, 0.3^2), conv kernels as drawn."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("_conv"):
                continue
            p.copy_(torch.randn_like(p) / p.shape[0] ** 0.5 if p.ndim > 1 else
                    1 + 0.3 * torch.randn_like(p))


def measure(spec: str, tokens: int, segment: int, mode: str, backward: bool, hparams: dict,
            o1: bool = False):
    torch.manual_seed(0)
    m = nldsl.compile(spec, schedule="chunked", **sizes(spec), **hparams)
    if o1:
        redraw(m)
    x = torch.randn(1, tokens, m.program.dim)                              # [B, T, dim]
    state, ys, growth = None, [], []
    start = time.perf_counter()
    with torch.set_grad_enabled(backward), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bfloat16"):
        for t0 in range(0, tokens, segment):
            y, state = m(x[:, t0:t0 + segment], state, end=t0 + segment >= tokens)
            ys.append(y)
            growth.append(largest(state))
        y = torch.cat(ys, dim=1)
        loss = y.float().square().mean()
    grads = {}
    if backward:
        loss.backward()
        grads = {n: p.grad for n, p in m.named_parameters() if p.grad is not None}
    finite = lambda ts: all(bool(torch.isfinite(t).all()) for t in ts)
    return dict(spec=spec, mode=mode, tokens=tokens, backward=backward, o1=o1, hparams=hparams,
                fast=bool(m.fast_paths), y_finite=finite([y]),
                state_finite=finite(list(tensors(state))),
                grads_finite=finite(grads.values()) if backward else None,
                bad_grads=[n for n, g in grads.items() if not torch.isfinite(g).all()],
                state_dtypes=sorted({str(v.dtype) for v in tensors(state)}),
                y_max=float(y.detach().float().abs().max()),
                state_max_first=growth[0], state_max_end=growth[-1], state_max_all=max(growth),
                grad_max=max((float(g.abs().max()) for g in grads.values()), default=None),
                seconds=time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--specs", nargs="+", default=list(SPECS))
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--segment", type=int, default=512)
    parser.add_argument("--modes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--backward", action="store_true")
    parser.add_argument("--hparam", nargs="*", default=[])
    parser.add_argument("--o1", action="store_true", help="redraw the parameters O(1)")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    hparams = {k: float(v) for k, v in (h.split("=") for h in args.hparam)}
    rows = []
    for spec in args.specs:
        for mode in args.modes:
            r = measure(spec, args.tokens, args.segment, mode, args.backward, hparams, args.o1)
            rows.append(r)
            print(json.dumps(r), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
