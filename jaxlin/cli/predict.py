"""`jaxlin predict`: classify image files with a params.npz written by `jaxlin train`."""

from __future__ import annotations

import argparse
import json
import sys

from jaxlin.config import ConfigError
from jaxlin.runtime.signals import StopRequest


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="classify image files with saved params",
        description="Classify PNG/JPEG images: each is made into an image of the shape the params were trained "
                    "on (stored in params.npz). Gray images (MNIST and its kin) are made as MNIST was: grayscale, "
                    "white on black, cropped, scaled into 20/28 of the image (20x20 of 28x28) and centred by mass; "
                    "colour images are resized to the data's size as they are.")
    p.add_argument("params", help="path to a params.npz written by `jaxlin train`")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--top", type=int, default=3,
                   help="how many probabilities to show, up to the params' class count (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")


def run(args: argparse.Namespace, stop: StopRequest | None) -> int:
    """Exit 2 when any image could not be classified (each is named; the others are still classified)."""
    from jaxlin.runs.predict import predict_files

    if args.top < 1:  # its upper limit is the params' class count (`predict_files`)
        raise ConfigError(f"--top must be at least 1, got {args.top}")
    from jaxlin.cli.backend import jax_devices

    jax_devices()
    results = predict_files(args.params, args.images, args.top)
    if args.json:
        print(json.dumps([{"path": r.path, "label": r.label, "probabilities": r.probabilities, "error": r.error}
                          for r in results], indent=2))
    for result in results:
        if result.error:
            print(f"jaxlin: error: {result.error}", file=sys.stderr)
        elif not args.json:
            top = ", ".join(f"{label}: {p:.1%}" for label, p in result.top(args.top))
            print(f"{result.path}: {result.label}  ({top})")
    return 2 if any(r.error for r in results) else 0
