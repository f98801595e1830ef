"""`nldsl test SPEC... [--examples N] [--deadline MS] [--checks derivations,schedules,...]`

Runs the nldsl.checking checks on stdlib names or .nl files and prints one row per spec and
check: pass, FAIL, n/a (the check does not apply: a twin for a module, no derived rule) or
error (the spec does not load or compile), with the examples run and the time taken. Each
counterexample and error follows the table. Exit status 1 when any check fails or errors.

The twin check compares an optimizer with the torch class `--twin` names (`torch.optim.Adam`,
or a bare class name in torch.optim); without it, a stdlib optimizer with a PyTorch twin is
compared with that twin (`TWINS`), and other specs are n/a. `--against SPEC` adds a row per
module spec: it computes what SPEC computes (`check_equivalent(SPEC, spec)`).
"""
from __future__ import annotations

import argparse
import sys
import time

CHECKS = ("derivations", "schedules", "twin", "invariants")
TWINS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "adagrad": "Adagrad",
         "rmsprop": "RMSprop", "muon": "Muon"}


def test_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs", nargs="+", metavar="FILE|NAME",
                        help="a path to a .nl file or the name of a standard-library spec")
    parser.add_argument("--examples", type=int, default=10, metavar="N",
                        help="drawn cases per check (default 10)")
    parser.add_argument("--deadline", type=int, default=None, metavar="MS",
                        help="fail an example that takes longer than MS milliseconds (default: none)")
    parser.add_argument("--checks", type=_checks, default=CHECKS, metavar="LIST",
                        help=f"comma-separated, from {','.join(CHECKS)} (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="the seed of the draws (default 0)")
    parser.add_argument("--twin", default=None, metavar="CLASS",
                        help="the torch optimizer class the twin check compares with")
    parser.add_argument("--against", default=None, metavar="FILE|NAME",
                        help="also check that each module spec computes what this one computes")


def _checks(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in CHECKS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown check {', '.join(unknown) or '(none)'}; "
                                         f"choose from {','.join(CHECKS)}")
    return names


def twin_class(name: str):
    """`torch.optim.Adam`, `Adam` (in torch.optim) or `package.module.Class`."""
    import importlib

    import torch

    module, _, cls = name.rpartition(".")
    owner = importlib.import_module(module) if module else torch.optim
    found = getattr(owner, cls, None)
    if found is None:
        raise ValueError(f"no optimizer class {name!r}")
    return found


def _run_one(spec, target: str, check: str, args):
    """(Report or None, why not applicable) for one check of one spec."""
    from nldsl import checking

    budget = dict(examples=args.examples, deadline=args.deadline, seed=args.seed)
    if check == "equivalent":
        if spec.kind != "module":
            return None, "compares module specs"
        return checking.check_equivalent(args.against, spec, **budget), ""
    if check == "twin":
        if spec.kind != "optimizer":
            return None, "a module has no torch twin"
        name = args.twin or TWINS.get(target)
        if name is None:
            return None, "no twin: pass --twin CLASS"
        return checking.check_twin(spec, twin_class(name), **budget), ""
    return getattr(checking, f"check_{check}")(spec, **budget), ""


def run_test(args: argparse.Namespace) -> int:
    from nldsl.errors import NLDSLError
    from nldsl.spec import load

    try:
        from nldsl.checking.report import CheckFailure
    except ImportError as err:
        print(f"nldsl test needs hypothesis ({err}): pip install 'nldsl[test]'", file=sys.stderr)
        return 1

    rows, notes = [], []
    for target in args.specs:
        try:
            spec = load(target)
        except (NLDSLError, OSError, UnicodeDecodeError) as err:
            rows.append([target, "(load)", "error", "", "", _first_line(err)])
            notes.append(f"{target}: {err}")
            continue
        for check in args.checks + (("equivalent",) if args.against else ()):
            start = time.perf_counter()
            try:
                report, why = _run_one(spec, target, check, args)
            except CheckFailure as failure:
                seconds = time.perf_counter() - start
                rows.append([target, check, "FAIL", "", f"{seconds:.1f}s", "counterexample below"])
                notes.append(f"{target}, {check}: {failure}")
                continue
            except Exception as err:      # a spec that does not compile, or a bug: one row
                if not isinstance(err, (NLDSLError, ValueError, TypeError)):
                    err = RuntimeError(f"{type(err).__name__} inside the check: {err}")
                repeated = f"{target}: {err}" in notes
                rows.append([target, check, "error", "", "", "as above" if repeated else
                             _first_line(err)])
                if not repeated:
                    notes.append(f"{target}: {err}")
                continue
            seconds = time.perf_counter() - start
            if report is None or report.status != "pass":
                rows.append([target, check, "n/a", "", "", why or report.reason])
            else:
                rows.append([target, check, "pass", str(report.examples), f"{seconds:.1f}s",
                             "; ".join(report.checked)])
    print(_table(["spec", "check", "result", "examples", "time", "what"], rows))
    for note in notes:
        print(f"\n{note}")
    bad = sum(row[2] in ("FAIL", "error") for row in rows)
    print(f"\n{len(rows) - bad} of {len(rows)} checks passed or do not apply" +
          (f"; {bad} failed" if bad else ""))
    return 1 if bad else 0


def _first_line(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[-1][:90] if len(lines) > 1 and "problems" in lines[0] else (lines or [""])[0][:90]


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [headers] + rows) for i in range(len(headers))]
    lines = [headers, ["-" * w for w in widths]] + rows
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)
