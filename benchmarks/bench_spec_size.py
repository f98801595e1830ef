"""Front-end and compiler time against the size of a spec: every stage must be near-linear.

    .venv/bin/python benchmarks/bench_spec_size.py [--sizes 10 100 1000] [--timeout 120]

Three families of spec, each of size N:
  * `sum`: one update `W <- W - lr * (grad(W) + grad(W) + ...)` with N terms (a deep left tree);
  * `lets`: a chain of N `let`s, each referring to the next one (forward references), the last
    one to grad(W), so each must be ordered after the one it reads;
  * `unknown`: N `let`s, each using a name defined nowhere: the validator reports all N
    problems (its stage includes formatting the message), and nothing after it runs.
Each stage is timed on its own (parse, build + validate, lower, generate + compile the fused
step, one reference step and one fused step on a 4-element parameter); the ratio column is the
time of N over the time of N / 10: about 10 for a linear stage, 100 for a quadratic one. A stage
over `--timeout` seconds in total stops its family (reported as `>`).
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from nldsl.build import build
from nldsl.errors import NLDSLError, Source
from nldsl.optim.codegen import compile_plan
from nldsl.optim.interpret import initial_state, reference_step
from nldsl.optim.plan import lower
from nldsl.language.parser import parse
from nldsl.spec import Spec
from nldsl.validation.validate import validate


def sum_spec(n: int) -> str:
    terms = " + ".join(["grad(W)"] * n)
    return ("optimizer s(lr = 0.1 > 0) {\n  level weights every 1 step {\n"
            f"    W <- W - lr * ({terms})\n  }}\n}}\n")


def lets_spec(n: int) -> str:
    lets = "".join(f"    let a{i} = a{i + 1} * 0.5\n" for i in range(n - 1))
    return ("optimizer s(lr = 0.1 > 0) {\n  level weights every 1 step {\n"
            "    W <- W - lr * a0\n  }\n  level grads every 1 step {\n"
            f"{lets}    let a{n - 1} = grad(W)\n  }}\n}}\n")


def unknown_spec(n: int) -> str:
    lets = "".join(f"    let a{i} = u{i} * 0.5\n" for i in range(n))
    return ("optimizer s(lr = 0.1 > 0) {\n  level weights every 1 step {\n"
            f"    W <- W - lr * grad(W)\n{lets}  }}\n}}\n")


@torch.no_grad()
def _steps(spec: Spec, plan, compiled) -> None:
    param = torch.nn.Parameter(torch.ones(4))
    param.grad = torch.full((4,), 0.5)
    hparams = {"lr": 0.1}
    reference_step(plan, [param], [initial_state(plan, param, hparams)], hparams)
    compiled([param], [initial_state(plan, param, hparams)], hparams)


def stages(text: str) -> dict[str, float]:
    times = {}
    start = time.perf_counter()
    decl = parse(text, "<bench>")
    times["parse"] = time.perf_counter() - start
    start = time.perf_counter()
    source = Source(text, "<bench>")
    try:
        spec = Spec(source, decl, validate(build(decl), source))
    except NLDSLError as error:                # the `unknown` family: every problem reported
        report = str(error)
        times["validate"] = time.perf_counter() - start
        assert f"{len(error.problems)} problems" in report, "the report does not count them all"
        return times
    times["validate"] = time.perf_counter() - start
    start = time.perf_counter()
    plan = lower(spec)
    times["lower"] = time.perf_counter() - start
    start = time.perf_counter()
    compiled = compile_plan(plan)
    times["compile"] = time.perf_counter() - start
    start = time.perf_counter()
    _steps(spec, plan, compiled)
    times["step"] = time.perf_counter() - start
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 10000])
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    sys.setrecursionlimit(100_000)
    names = ["parse", "validate", "lower", "compile", "step"]
    print(f"{'family':7} {'N':>6} " + " ".join(f"{n:>17}" for n in names) + "   (seconds, ratio)")
    for family, make in (("sum", sum_spec), ("lets", lets_spec), ("unknown", unknown_spec)):
        previous = None
        for n in args.sizes:
            start = time.perf_counter()
            try:
                times = stages(make(n))
            except RecursionError:
                print(f"{family:7} {n:>6}  RecursionError")
                break
            cells = []
            for name in names:
                if name not in times:
                    cells.append(f"{'-':>9}" + " " * 8)
                    continue
                ratio = times[name] / previous[name] if previous and previous[name] > 1e-4 else None
                cells.append(f"{times[name]:9.4f}" + (f" x{ratio:6.1f}" if ratio else " " * 8))
            print(f"{family:7} {n:>6} " + " ".join(cells), flush=True)
            previous = times
            if time.perf_counter() - start > args.timeout:
                print(f"{family:7} > {n}: over {args.timeout} s, stopping this family")
                break
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
