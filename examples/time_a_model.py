"""Timing a model of your own with the benchmark's jaxlin contender: `plain_jax_model:TinyMLP` in jaxlin's
fused loop (the whole training set on the device, a chunk of steps per compiled call), in this process.

The full benchmark times it the same way, with interleaved repeats, the per-step loop too, and the built-in
models beside it; from this directory (results in ./jaxlin-bench/):

    python -m bench --data-dir $JAXLIN_DATA_DIR --cases plain_jax_model:TinyMLP:100:500,linear:100:500 \\
        --contenders jaxlin_per_step,jaxlin_fused --optimizer adam --learning-rate 0.001 \\
        --no-sweep --no-vmap --no-tta --no-e2e

Run this file for a quick measurement (MNIST from --data-dir or $JAXLIN_DATA_DIR):

    python time_a_model.py --steps 500
"""

from __future__ import annotations

import argparse
import os
import statistics

MODEL = "plain_jax_model:TinyMLP"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="steps per timed run (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after a warm-up (default: %(default)s)")
    parser.add_argument("--data-dir", default=os.environ.get("JAXLIN_DATA_DIR"),
                        help="MNIST IDX files (default: $JAXLIN_DATA_DIR)")
    args = parser.parse_args(argv)
    if not args.data_dir:
        parser.error("no data: pass --data-dir or set JAXLIN_DATA_DIR")

    from bench.common import load_data
    from bench.jax_contenders import JaxlinFused

    contender = JaxlinFused(load_data(args.data_dir), optimizer="adam", learning_rate=1e-3)
    setup = contender.setup(model=MODEL, batch_size=args.batch_size, num_steps=args.steps)  # compiles, warms up
    seconds = [contender.run()["seconds"] for _ in range(args.repeats)]
    median = statistics.median(seconds)
    print(f"{MODEL}, batch {args.batch_size}, adam: {1e6 * median / args.steps:,.1f} us/step "
          f"({args.steps * args.batch_size / median:,.0f} examples/s; median of {args.repeats} runs of "
          f"{args.steps} steps; compiled in {setup['compile_seconds']:.2f} s)")


if __name__ == "__main__":
    main()
