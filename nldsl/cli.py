"""The `nldsl` command line.

    nldsl check FILE|NAME...     validate specs; every problem goes to stderr, exit 1 if any
    nldsl show NAME [--canonical] print a stdlib spec's text (or its canonical form)
    nldsl list                   every stdlib spec with its one-line description
    nldsl demo [--out DIR]       check the whole stdlib, train with every optimizer spec, run every
                                 module spec, train DeltaNet on Parity (report in DIR)
    nldsl render SPEC -o OUT     draw its nesting diagram (.svg/.png/.pdf/.dot) or --timeline
    nldsl compile SPEC           compile it (--show-code prints the generated code)
    nldsl test SPEC...           property-test what the compiler derived (docs/testing.md)
    nldsl train SPEC --task T    train it as a small language model (docs/training.md)

Each subcommand is a small function registered in `COMMANDS` with the function that declares
its arguments; a new stage (`render`, `compile`, `bench`) is one more entry. Exit status: 0 when
all is well, 1 when a spec has problems or a file cannot be read, 2 for a malformed command
line. A user's mistake is reported as a message, never as a Python traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nldsl
from nldsl.errors import NLDSLError
from nldsl.library import description, resolve, stdlib_names, stdlib_text
from nldsl.language.parser import parse
from nldsl.language.printer import format_spec
from nldsl.render.cli import render_arguments, run_render
from nldsl.optim.cli import compile_arguments, run_compile
from nldsl.checking.cli import run_test, test_arguments
from nldsl.train.cli import run_train, train_arguments

DESCRIPTION_WIDTH = 72


def report(err: Exception, target: str, output: str | None = None) -> None:
    """Print a user-facing error to stderr: located problems as they are, others with the
    target they concern; a failed file operation says whether reading the spec or writing
    `output` (the file a command writes, if any) failed."""
    if isinstance(err, NLDSLError) and err.line >= 1:
        print(err, file=sys.stderr)
    elif isinstance(err, OSError):
        reason = err.strerror or str(err)
        path = err.filename or target
        verb = "write" if output is not None and _is_within(output, path) else "read"
        print(f"{target}: error: cannot {verb} {path}: {reason}", file=sys.stderr)
    elif isinstance(err, UnicodeDecodeError):
        print(f"{target}: error: not a text file ({err.reason})", file=sys.stderr)
    else:
        print(f"{target}: error: {err}", file=sys.stderr)


def _is_within(output: str, path) -> bool:
    """Whether the failing `path` is the output file or a folder on the way to it."""
    output, path = Path(output).absolute(), Path(os.fsdecode(path)).absolute()
    return path == output or path in output.parents


def load_or_report(target: str) -> nldsl.Spec | None:
    """`nldsl.load(target)`, or None after reporting why it failed."""
    try:
        return nldsl.load(target)
    except (NLDSLError, OSError, UnicodeDecodeError) as err:
        report(err, target)
        return None


def compilable_or_report(spec: nldsl.Spec, target: str) -> bool:
    """What the compilers refuse before any hyper-parameter is known (the unsupported-construct
    table for a module, the lowered plan's refusals for an optimizer), reported as `nldsl
    compile` would: whatever `nldsl check` accepts compiles."""
    from nldsl.lower.unsupported import check_supported
    from nldsl.optim.plan import lower
    try:
        check_supported(spec) if spec.kind == "module" else lower(spec)
    except NLDSLError as err:
        report(err, target)
        return False
    return True


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [headers] + rows) for i in range(len(headers))]
    lines = [headers, ["-" * width for width in widths]] + rows
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in lines)


def shorten(text: str, width: int = DESCRIPTION_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 3].rstrip() + "..."


# ---------------------------------------------------------------- subcommands

def check(args: argparse.Namespace) -> int:
    failed = 0
    for target in args.specs:
        spec = load_or_report(target)
        if spec is None or not compilable_or_report(spec, target):
            failed += 1
            continue
        levels = len(spec.decl.levels)
        shown = spec.source.filename if spec.source.filename == "<string>" else target
        print(f"ok  {shown}: {spec.kind} {spec.name}, {levels} level{'s' * (levels != 1)}")
    if failed:
        print(f"{failed} of {len(args.specs)} specs have problems", file=sys.stderr)
    return 1 if failed else 0


def show(args: argparse.Namespace) -> int:
    text, filename = resolve(args.name)
    print(format_spec(parse(text, filename)) if args.canonical else text, end="")
    return 0


def list_specs(args: argparse.Namespace) -> int:
    names = stdlib_names()
    width = max((len(name) for name in names), default=0)
    for name in names:
        print(f"{name.ljust(width)}  {description(stdlib_text(name))}".rstrip())
    return 0


def demo(args: argparse.Namespace) -> int:
    """Load every stdlib spec (parse, build, validate), summarise them in a table, train a small
    MLP with every optimizer spec beside its PyTorch twin, run every module spec in both
    schedules, and train a DeltaNet language model on Parity with its report written."""
    names = stdlib_names()
    rows, failed = [], 0
    for name in names:
        spec = load_or_report(name)
        if spec is None:
            failed += 1
            continue
        levels = ", ".join(level.name for level in spec.decl.levels)
        rows.append([name, spec.kind, levels, shorten(description(spec.text))])
    if rows:
        print(format_table(["name", "kind", "levels", "description"], rows))
    print(f"\n{len(rows)} of {len(names)} standard-library specs are valid")
    if failed:
        return 1
    from nldsl.optim.demo import STEPS, initial_loss, training_rows

    print(f"\nEvery optimizer spec, compiled, trains a small MLP for {STEPS} steps beside its "
          f"PyTorch twin (loss at the start: {initial_loss():.4f}):\n")
    print(format_table(["spec", "loss", "twin", "twin loss", "max rel. diff"], training_rows()))
    from nldsl.module.demo import BATCH, TOKENS, module_rows

    print(f"\nEvery module spec, compiled, reads the same stream of {BATCH} x {TOKENS} tokens in "
          "the chunked and the reference schedule:\n")
    print(format_table(["spec", "chunked schedule", "max |diff|", "chunked tok/s",
                        "reference tok/s"], module_rows()))
    from nldsl.train.config import Config
    from nldsl.train.loop import run

    config = Config(spec="deltanet", task="parity", steps=DEMO_STEPS, batch=16,
                    hparams={"heads": 2, "head_dim": 16}, out=args.out)
    print(f"\nA module spec trained as the block of a small language model: deltanet on Parity, "
          f"{DEMO_STEPS} steps (nldsl train deltanet --task parity; docs/training.md):\n")
    outcome = run(config)
    print(outcome.message)
    return 0 if outcome.status == "done" else 1


#: The demo's training run: long enough for the curves to fall, short enough for 2 cores.
DEMO_STEPS = 150


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="nldsl-demo", metavar="DIR",
                        help="where the demo's training run writes its report (default: nldsl-demo)")


def _spec_targets(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs", nargs="+", metavar="FILE|NAME",
                        help="a path to a .nl file or the name of a standard-library spec")


def _show_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="a standard-library spec (or a .nl file)")
    parser.add_argument("--canonical", action="store_true",
                        help="print the canonical form (nldsl.language.printer) instead of the source")


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments


COMMANDS = [
    Command("check", "parse and validate specs; print every problem", check, _spec_targets),
    Command("show", "print a standard-library spec", show, _show_arguments),
    Command("list", "list the standard-library specs", list_specs),
    Command("demo", "check every standard-library spec, summarise them, and train one",
            demo, _demo_arguments),
    Command("render", "draw a spec's nesting diagram (or its timeline)", run_render,
            render_arguments),
    Command("compile", "compile an optimizer spec; --show-code prints the generated code",
            run_compile, compile_arguments),
    Command("test", "property-test what the compiler derived for specs", run_test,
            test_arguments),
    Command("train", "train a module spec on a generated task (docs/training.md)", run_train,
            train_arguments),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nldsl", description="nldsl: level specs for nested learning, checked and compiled.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the exit status (argparse's own 2 for a bad command line)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return args.run(args)
    except (NLDSLError, OSError, UnicodeDecodeError) as err:
        report(err, getattr(args, "name", args.command), getattr(args, "output", None))
        return 1


if __name__ == "__main__":
    sys.exit(main())
