"""`nldsl render SPEC -o out.svg|png|pdf|dot [--detail full] [--direction LR] [--timeline]`.

Registered in `nldsl.cli.COMMANDS`; errors are `NLDSLError`s that the CLI reports as messages.
"""
from __future__ import annotations

import argparse

from nldsl.render import DETAILS, DIRECTIONS, render


def render_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="FILE|NAME",
                        help="a path to a .nl file or the name of a standard-library spec")
    parser.add_argument("-o", "--output", required=True, metavar="PATH",
                        help="where to write: .svg, .png, .pdf (need Graphviz's `dot`) or .dot")
    parser.add_argument("--detail", choices=DETAILS, default="compact",
                        help="compact labels (cut long expressions) or full ones (default: "
                             "compact)")
    parser.add_argument("--direction", choices=DIRECTIONS, default="TB",
                        help="top-to-bottom or left-to-right (default: TB)")
    parser.add_argument("--no-legend", dest="legend", action="store_false",
                        help="leave out the legend of edge styles")
    parser.add_argument("--timeline", action="store_true",
                        help="draw which levels write at each step or token instead")
    parser.add_argument("--window", type=_positive_int, metavar="N",
                        help="with --timeline: how many steps or tokens to show (default: two "
                             "periods of the slowest level)")


def _positive_int(text: str) -> int:
    """argparse type of `--window`: a count of units to draw, so at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def run_render(args: argparse.Namespace) -> int:
    path = render(args.name, args.output, detail=args.detail, direction=args.direction,
                  timeline=args.timeline, window=args.window, legend=args.legend)
    print(f"wrote {path}")
    return 0
