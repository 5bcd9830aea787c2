"""`jaxlin compare`: runs side by side, a figure of their learning curves and a table (runs/compare.py)."""

from __future__ import annotations

import argparse

from jaxlin.runtime.signals import StopRequest


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="put runs side by side: learning curves and a table",
        description="Compare `jaxlin train` runs (finished, stopped or still going) and a sweep's best/ member: "
                    "one PNG of train loss and accuracy against step and against wall time, and a table of "
                    "final accuracy, train loss, steps, wall time, steps/s and the settings that differ. "
                    "One run is allowed (its curves and numbers).")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="output directories of `jaxlin train` (or DIR/best "
                                                             "of a sweep)")
    p.add_argument("--output", default="compare.png", metavar="PATH",
                   help="where the figure goes (default: %(default)s in the current directory)")
    p.add_argument("--no-figure", action="store_true", help="print the table only; write no figure")
    p.add_argument("--json", action="store_true", help="print the table as JSON (nothing else on stdout)")


def check(args: argparse.Namespace) -> None:
    """The paths, before JAX is imported: missing, not directories, given twice; the figure's place."""
    from jaxlin.runs.compare import check_output, check_paths

    check_paths(args.runs)
    if not args.no_figure:
        check_output(args.output)


def run(args: argparse.Namespace, stop: StopRequest | None) -> int:
    from jaxlin.runs.compare import check_output, format_table, plot_runs, read_runs, table
    from jaxlin.runs.rundir import to_json

    runs = read_runs(args.runs)  # every run read (or refused) before anything is written
    figure = None
    if not args.no_figure:
        plot_runs(runs, check_output(args.output))  # a symlink's own file, written through it
        figure = str(args.output)
    summary = table(runs, figure)
    if args.json:
        print(to_json(summary, indent=2))
        return 0
    print(format_table(runs, summary))
    if figure:
        print(f"Wrote {figure}")
    return 0
