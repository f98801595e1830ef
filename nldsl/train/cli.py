"""`nldsl train SPEC --task TASK [options]`: the command line of nldsl/train (docs/training.md).

Declaring the arguments imports no torch (`nldsl.cli` is front end); running them does.
Exit status: 0 when the run finishes, 1 when it diverges or cannot start, 130 after Ctrl-C
(the checkpoint is saved; `--resume` continues it).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

RESUMABLE = ("steps", "device", "nproc", "eval_every")  # what --resume may change
EXIT = {"done": 0, "diverged": 1, "interrupted": 130}


def _value(text: str):
    """A hyper-parameter's text to a bool, int, float or string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def key_value(text: str) -> tuple[str, object]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), _value(value.strip())


def train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC", help="a module spec: stdlib name or .nl file")
    parser.add_argument("--task", required=True,
                        help="NAME[:option=value,...]: parity, aa, abab, anbn, anbncn, "
                             "shuffle2, mqar, needle, continual")
    add = parser.add_argument
    add("--steps", type=int, help="optimizer steps (default 200)")
    add("--batch", type=int, help="global batch of sequences (default 32)")
    add("--seq", type=int, help="training length: a language's longest word, else seq_len")
    add("--lr", type=float, help="the outer optimizer's learning rate (default 3e-3)")
    add("--optimizer", help="an optimizer spec NAME[:option=value,...] (default adamw)")
    add("--dim", type=int, help="model width (default 32)")
    add("--depth", type=int, help="number of blocks (default 2)")
    add("--untied", dest="tied", action="store_false", default=None,
        help="an output head of its own instead of the embedding's transpose")
    add("--schedule", choices=["chunked", "reference"], help="module schedule (default chunked)")
    add("-p", "--param", dest="hparams", type=key_value, action="append", metavar="KEY=VALUE",
        help="a hyper-parameter of the spec (heads=2, head_dim=16) or block_size; repeatable")
    add("--frozen-levels", dest="online", action="store_false", default=None,
        help="levels that learn from the task loss stay frozen (an ordinary network)")
    add("--first-order", action="store_true", default=None,
        help="the outer gradient passes those levels' writes as constants (first order)")
    add("--truncate", type=int, metavar="TOKENS",
        help="for those levels: backpropagate every TOKENS tokens and cut the gradient there "
             "(truncated BPTT, backward memory bounded by TOKENS; default 0: whole sequences)")
    add("--eval-every", type=int, help="steps between evaluations and checkpoints")
    add("--device", help="cpu or cuda (default cpu)")
    add("--seed", type=int, help="seed of the weights and the data (default 0)")
    add("--out", help="output folder (default runs/SPEC-TASK)")
    add("--nproc", type=int, help="data-parallel processes (torch.distributed; default 1)")
    add("--resume", action="store_true", help="continue from the checkpoint in --out")
    add("--no-progress", dest="progress", action="store_false", help="no progress bar")


def config_from(args: argparse.Namespace):
    """The run's Config: the options given, Config's defaults for the rest; with --resume,
    the checkpoint's, of which only RESUMABLE options may change."""
    from nldsl.train.config import Config

    given = {k: v for k, v in vars(args).items()
             if k in Config.__dataclass_fields__ and v is not None}
    given["hparams"] = dict(given.get("hparams", []))
    given.setdefault("out", str(Path("runs") / f"{Path(args.spec).stem}-"
                                f"{args.task.partition(':')[0]}"))
    if not args.resume:
        return Config(**given)
    from nldsl.train import checkpoint

    saved = checkpoint.load(Path(given["out"]))["config"]
    changed = [k for k, v in given.items() if k not in RESUMABLE + ("out",)
               and k != "hparams" and v != saved.get(k)]
    if given["hparams"] and given["hparams"] != saved["hparams"]:
        changed.append("hparams")
    if changed:
        raise ValueError(f"--resume continues the saved run; it cannot change "
                         f"{', '.join(changed)} (only {', '.join(RESUMABLE)})")
    return Config.from_dict({**saved, **{k: given[k] for k in RESUMABLE + ("out",)
                                         if k in given}})


def run_train(args: argparse.Namespace) -> int:
    from nldsl.train.distributed import launch

    try:
        config = config_from(args)
        outcome = launch(config, resume=args.resume, progress=args.progress)
    except (ValueError, FileNotFoundError) as err:
        print(f"nldsl train: error: {err}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") == "0":  # under torchrun, every rank returns here
        print(outcome.message, file=sys.stderr if outcome.status != "done" else sys.stdout)
    return EXIT[outcome.status]
