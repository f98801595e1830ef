"""Continual learning from the task loss: task A then task B, online against frozen, by seed.

    .venv/bin/python benchmarks/bench_continual.py [--spec cms] [--seeds 0,1,2,3,4]
        [--outer-steps 40] [--tokens 64] [--dim 32] [-p period_slow=16 ...] [--levels]

The experiment of nldsl/train/continual.py (docs/training.md, "Continual learning"): per seed, a
short outer training, then the split stream (A on the lower half of the symbols, B on the upper
half) and the conflicting one (A and B on the same symbols), each with the task levels online and
frozen from the same weights. Prints per seed the probe loss on A after A and after B, the loss
area over the B stream, and the margins the test asserts:

  retained  frozen A after B - online A after B       (> 0: online keeps A better)
  kept      retained / (frozen A after A - online A after A)   (the share of A's gain kept)
  faster    frozen B area - online B area              (> 0: online learns B faster)

`--levels` adds the ablation by level: the trials again with one task level online and the
others frozen (the trained weights loaded into the network compiled with the other levels'
`lr_*` at 0, so the weights are the same and only the rates differ).

float64, one torch thread; the CPU seconds of the outer training and of the trials.
"""
from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

from nldsl.train.continual import Setting, build, meta_train, trial

# the unit test's setting (tests/test_module_task_continual.py): the periods and rates of cms
CMS_HPARAMS = (("period_slow", 16), ("period_mid", 8), ("period_fast", 4),
               ("lr_slow", 0.1), ("lr_mid", 0.1), ("lr_fast", 0.1))


def parse_hparams(pairs: list[str]) -> tuple:
    found = dict(CMS_HPARAMS)
    for pair in pairs:
        key, value = pair.split("=")
        found[key] = float(value) if "." in value or "e" in value else int(value)
    return tuple(found.items())


def margins(found: dict) -> dict:
    on, off = found[True], found[False]
    retained = off["a_after_b"] - on["a_after_b"]
    gain = off["a_after_a"] - on["a_after_a"]
    return {"retained": retained, "kept": retained / gain if gain > 0 else float("nan"),
            "faster": off["b_stream"] - on["b_stream"]}


def by_level(model, setting: Setting, seed: int):
    """(rate, network) per `lr_*` hyper-parameter: `model`'s weights in the network compiled with
    every other `lr_*` at 0 (one task level online, the others frozen)."""
    rates = [key for key, _ in setting.hparams if key.startswith("lr_")]
    for rate in rates:
        hparams = tuple((k, 0.0 if k in rates and k != rate else v) for k, v in setting.hparams)
        alone = build(replace(setting, hparams=hparams), seed)
        alone.load_state_dict(model.state_dict())
        yield rate, alone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="cms")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--outer-steps", type=int, default=40)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("-p", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--levels", action="store_true", help="the ablation by level")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    setting = Setting(args.spec, parse_hparams(args.p), dim=args.dim, batch=args.batch,
                      tokens=args.tokens, outer_steps=args.outer_steps)
    print(setting)
    rows = {"split": [], "conflicting": []}
    print(f"{'seed':>4} {'stream':12} {'cond':7} {'A after A':>9} {'A after B':>9} "
          f"{'B area':>7} | {'retained':>8} {'kept':>5} {'faster':>6} | cpu s (outer, trial)")
    for seed in (int(s) for s in args.seeds.split(",")):
        start = time.process_time()
        model = build(setting, seed)
        meta_train(model, setting, seed)
        outer = time.process_time() - start
        for name, conflict in (("split", False), ("conflicting", True)):
            start = time.process_time()
            found = trial(model, setting, seed, conflict)
            spent = time.process_time() - start
            m = margins(found)
            rows[name].append(m)
            for learn in (True, False):
                r = found[learn]
                tail = (f"| {m['retained']:8.3f} {m['kept']:5.2f} {m['faster']:6.3f} | "
                        f"{outer:.1f}, {spent:.2f}") if learn else ""
                print(f"{seed:4d} {name:12} {'online' if learn else 'frozen':7} "
                      f"{r['a_after_a']:9.3f} {r['a_after_b']:9.3f} {r['b_stream']:7.3f} {tail}")
            for rate, alone in (by_level(model, setting, seed) if args.levels else ()):
                found = trial(alone, setting, seed, conflict)
                r, m = found[True], margins(found)
                print(f"{seed:4d} {name:12} {rate + ' only':>14} {r['a_after_a']:9.3f} "
                      f"{r['a_after_b']:9.3f} {r['b_stream']:7.3f} | {m['retained']:8.3f} "
                      f"{m['kept']:5.2f} {m['faster']:6.3f}")
    for name, ms in rows.items():
        summary = ", ".join(f"{k} min {min(m[k] for m in ms):.3f} median "
                            f"{statistics.median(m[k] for m in ms):.3f}" for k in ms[0])
        print(f"{name}: {summary}")


if __name__ == "__main__":
    main()
