"""Issue 13 §3's small table: module specs trained as language models on the formal languages
(Bin0/Bin1 sequence accuracy) and MQAR, with `nldsl train`'s loop.

    .venv/bin/python benchmarks/train_table.py [--specs linear_attention deltanet gated_deltanet]
        [--tasks parity aa anbn mqar] [--steps 400] [--batch 32] [--lr 3e-3] [--dim 32]
        [--depth 2] [--heads 2] [--head-dim 16] [--seq 12] [--threads 1] [--out runs/table]
        [--json table.json] [-p KEY=VALUE ...] [--frozen-levels]

Every run is `nldsl train SPEC --task TASK` with these options (its report in OUT/SPEC-TASK),
one after the other, each on `--threads` threads. Formal languages train on words of lengths
1..seq and report the fraction of words recognised at every position (Bhattamishra et al.
2020's criterion) on fresh words of those lengths (Bin0) and of lengths seq+1..2 seq (Bin1);
MQAR (4 pairs in 32 tokens, 64-token vocabulary) reports the fraction of queries answered.
The numbers are the last evaluation's, at the last step. `-p KEY=VALUE` sets a hyper-parameter
of every spec that declares it (`-p period_fast=4` for hope and cms). Specs whose levels learn
from the task loss (hope, cms, hope_attention) train and evaluate through `nldsl.stream`
(nldsl/train/online.py) unless `--frozen-levels`; their result also has `frozen`, the final
model evaluated with those levels frozen. `--rescore` trains nothing and scores the runs
already in `--out`. A spec that does not compile is reported as
such, with the compiler's reason.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import nldsl
from nldsl.errors import NLDSLError
from nldsl.tasks.languages import LANGUAGES
from nldsl.train.cli import key_value
from nldsl.train.config import Config
from nldsl.train import checkpoint
from nldsl.train.config import build_model, build_task
from nldsl.train.loop import Outcome, evaluate, run
from nldsl.train.online import learns_online

MQAR = "mqar:pairs=4,seq_len=32,vocab_size=64"


def one_run(spec: str, task: str, args) -> dict:
    name = task.partition(":")[0]
    declared = {h.name for h in nldsl.load(spec).decl.hparams}
    given = {"heads": args.heads, "head_dim": args.head_dim, **dict(args.params)}
    sizes = {k: v for k, v in given.items()
             if k in declared}  # a spec without heads (hope, cms) keeps its own shapes
    config = Config(spec, MQAR if name == "mqar" else task, steps=args.steps, batch=args.batch,
                    seq=args.seq if name in LANGUAGES else None, lr=args.lr, dim=args.dim,
                    depth=args.depth, hparams=sizes, online=not args.frozen_levels,
                    seed=args.seed, out=str(Path(args.out) / f"{spec}-{name}"))
    started = time.perf_counter()
    if args.rescore:
        saved = checkpoint.load(Path(config.out))
        config = Config.from_dict(saved["config"])
        outcome = Outcome("done", saved["step"], "")
    else:
        try:
            outcome = run(config, progress=False)
        except NLDSLError as err:
            lines = str(err).splitlines()
            return {"spec": spec, "task": name,
                    "error": next((line for line in lines if "error:" in line), lines[0])}
    last = json.loads((Path(config.out) / "metrics.jsonl").read_text().splitlines()[-1])
    result = {"spec": spec, "task": name, "status": outcome.status, "step": outcome.step,
              "seconds": time.perf_counter() - started, **_scores(last, name)}
    frozen = frozen_evaluation(config, outcome.step) if config.online else None
    return {**result, "frozen": _scores(frozen, name)} if frozen else result


def _scores(metrics: dict, name: str) -> dict:
    return ({"bin0": metrics["bin0/sequence"], "bin1": metrics["bin1/sequence"]}
            if name in LANGUAGES else {"eval": metrics["eval/token"]})


def frozen_evaluation(config: Config, step: int) -> dict | None:
    """The last checkpoint's model evaluated with its online levels frozen (None for a spec
    without such levels)."""
    task = build_task(config)
    model = build_model(config, task.vocab_size)
    if not learns_online(model):
        return None
    model.load_state_dict(checkpoint.load(Path(config.out))["model"])
    return evaluate(model, task.eval_batches(config.seed, step), config.device, online=False)


def table(results: list[dict], tasks: list[str]) -> str:
    """One row per spec; a spec that learns online has a second row, `(frozen)`: its final
    model evaluated with those levels frozen."""
    head = ["spec"] + [f"{t} Bin0 / Bin1" if t in LANGUAGES else f"{t} acc" for t in tasks]
    rows = []
    for spec in dict.fromkeys(r["spec"] for r in results):
        runs = [next(r for r in results if r["spec"] == spec and r["task"] == t) for t in tasks]
        rows.append([spec] + [_cell(r, t) for r, t in zip(runs, tasks)])
        if any("frozen" in r for r in runs):
            rows.append([f"{spec} (frozen)"] + [_cell(r.get("frozen", r), t)
                                                for r, t in zip(runs, tasks)])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in rows])


def _cell(r: dict, task: str) -> str:
    if "error" in r:
        return "does not compile"
    return f"{r['bin0']:.2f} / {r['bin1']:.2f}" if task in LANGUAGES else f"{r['eval']:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", nargs="+",
                        default=["linear_attention", "deltanet", "gated_deltanet"])
    parser.add_argument("--tasks", nargs="+", default=["parity", "aa", "anbn", "mqar"])
    for flag, kind, default in [("--steps", int, 400), ("--batch", int, 32), ("--lr", float, 3e-3),
                                ("--dim", int, 32), ("--depth", int, 2), ("--heads", int, 2),
                                ("--head-dim", int, 16), ("--seq", int, 12),
                                ("--threads", int, 1), ("--seed", int, 0)]:
        parser.add_argument(flag, type=kind, default=default)
    parser.add_argument("--out", default="runs/table")
    parser.add_argument("--json")
    parser.add_argument("-p", dest="params", type=key_value, action="append", default=[],
                        metavar="KEY=VALUE")
    parser.add_argument("--frozen-levels", action="store_true")
    parser.add_argument("--rescore", action="store_true",
                        help="no training: score the runs already in --out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = []
    for spec in args.specs:
        for task in args.tasks:
            results.append(one_run(spec, task, args))
            print(json.dumps(results[-1]), flush=True)
    print(table(results, args.tasks))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
