"""`jaxlin download`: fetch and verify a data set ahead of time, or verify a directory."""

from __future__ import annotations

import argparse

from jaxlin.cli.flags import DEFAULTS, non_empty
from jaxlin.runtime.signals import StopRequest


def add_parser(subparsers) -> None:
    from jaxlin.config import DATASETS

    p = subparsers.add_parser(
        "download", help="fetch and verify a data set ahead of time, or verify a directory",
        description="Download the four IDX files of a data set from public mirrors ($JAXLIN_MIRRORS replaces "
                    "them), verify each by the sha256 of its uncompressed content, and keep them in jaxlin's "
                    "cache ($JAXLIN_CACHE_DIR, else $XDG_CACHE_HOME/jaxlin, else ~/.cache/jaxlin) or --dir.")
    p.add_argument("--dataset", choices=DATASETS, default=DEFAULTS.dataset, help="default: %(default)s")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--dir", type=non_empty, help="download into DIR instead of the cache")
    target.add_argument("--verify", type=non_empty, metavar="DIR",
                        help="check the files already in DIR; download nothing")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def run(args: argparse.Namespace, stop: StopRequest | None) -> int:
    """A signal stops it at once (download.py's own handlers raise StopNow and remove partial files)."""
    from jaxlin.data import download

    if args.verify:
        for line in download.verify(args.verify, args.dataset):
            print(line)
        print(f"All four {args.dataset} files in {args.verify} verify.")
        return 0
    directory = download.download(args.dataset, args.dir, progress=not args.no_progress)
    print(f"{args.dataset}: the four IDX files are in {directory}, verified.")
    return 0
