"""`nldsl compile NAME --show-code`: lower an optimizer spec and print its generated code."""
from __future__ import annotations

import argparse
import sys

from nldsl.errors import NLDSLError


def compile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="FILE|NAME", help="an optimizer spec (stdlib name or .nl file)")
    parser.add_argument("--show-code", action="store_true",
                        help="print the generated Python/torch source of the fused schedule")
    parser.add_argument("--plan", action="store_true", help="print the derived update rules")


def run_compile(args: argparse.Namespace) -> int:
    from nldsl.optim.codegen import generate
    from nldsl.optim.plan import lower
    from nldsl.printer import format_expr
    from nldsl.spec import load

    try:
        plan = lower(load(args.spec))
        mode, source = generate(plan)
    except NLDSLError as err:
        print(err, file=sys.stderr)
        return 1
    if args.plan or not args.show_code:
        for level in plan.levels:
            print(f"level {level.name} every {format_expr(level.period)}:")
            for write in level.writes:
                rule = (format_expr(write.value) if write.value is not None else
                        f"autograd step on {format_expr(write.autograd.loss)}")
                print(f"  {write.target} <- {rule}    [{write.derivation}]")
    if args.show_code:
        print(source, end="")
    else:
        print(f"fused schedule: {mode} (--show-code prints it)")
    return 0
