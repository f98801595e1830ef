"""`nldsl compile NAME --show-code`: lower an optimizer spec and print its generated code."""
from __future__ import annotations

import argparse


def compile_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="FILE|NAME",
                        help="an optimizer or module spec (stdlib name or .nl file)")
    parser.add_argument("--show-code", action="store_true",
                        help="print the generated Python/torch source of the fused schedule")
    parser.add_argument("--plan", action="store_true", help="print the derived update rules")


def run_compile(args: argparse.Namespace) -> int:
    """Errors propagate to `nldsl.cli.main`, which reports them naming the spec's file."""
    from nldsl.optim.codegen import generate
    from nldsl.optim.plan import lower
    from nldsl.language.printer import format_expr
    from nldsl.spec import load

    spec = load(args.name)
    if spec.decl.kind == "module":
        return _run_module(spec, args)
    plan = lower(spec)
    mode, source = generate(plan)
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


def _run_module(spec, args) -> int:
    """A module spec with its hyper-parameters' defaults (the required ones set to 8)."""
    from nldsl.module import compile as compile_module
    from nldsl.module.show import describe

    needed = {h.name: 8 for h in spec.decl.hparams if h.default is None}
    module = compile_module(spec, **needed)
    print(describe(module.program, module.fast_paths,
                   {n: tuple(p.shape) for n, p in module.named_parameters()}), end="")
    return 0
