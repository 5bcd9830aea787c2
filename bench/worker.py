"""A contender's process: `python -m bench.worker NAME --data-dir DIR [--optimizer NAME --learning-rate LR]`.

Loads the data and the contender's framework, says it is ready, then answers JSON
requests on stdin (see `bench.common.serve`). Each named variant of a setup (say,
the fused loop at K=100, unroll=4) keeps its own compiled state, so the runner can
interleave variants within one process.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import sys
import time

START = time.perf_counter()

CONTENDERS = {
    "tf_reference": ("bench.tf_reference", "TfReference", "tensorflow"),
    "tf2_function": ("bench.tf2_loop", "Tf2Loop", "tensorflow"),
    "tf2_xla": ("bench.tf2_loop", "Tf2Xla", "tensorflow"),
    "torch_eager": ("bench.torch_eager", "TorchEager", "torch"),
    "jaxlin_per_step": ("bench.jax_contenders", "JaxlinPerStep", "jax"),
    "jaxlin_fused": ("bench.jax_contenders", "JaxlinFused", "jax"),
    "jaxlin_vmap": ("bench.jax_contenders", "JaxlinVmap", "jax"),
    "jaxlin_sweep": ("bench.jax_contenders", "JaxlinSweep", "jax"),
    "jaxlin_data_parallel": ("bench.jax_contenders", "JaxlinDataParallel", "jax"),
    "numpy_floor": ("bench.numpy_floor", "NumpyFloor", "numpy"),
}


class Variants:
    """Routes requests to one contender instance per variant name."""

    def __init__(self, factory, data):
        self.factory, self.data, self.instances = factory, data, {}
        self.default = factory(data)

    def info(self) -> dict:
        return self.default.info()

    def setup(self, variant: str, **kwargs) -> dict:
        self.instances[variant] = self.factory(self.data)
        return self.instances[variant].setup(**kwargs)

    def run(self, variant: str) -> dict:
        return self.instances[variant].run()

    def drop(self, variant: str) -> dict:
        self.instances.pop(variant, None)
        return {}

    def profile(self, setup: dict, directory: str, start: int | None = None, stop: int | None = None) -> dict:
        """`python -m bench --profile`: a fresh instance set up as a timed row was (compiled and run once),
        then one more run, untimed, traced into `directory` (a JAX contender's `profile`); dropped after."""
        instance = self.factory(self.data)
        instance.setup(**setup)
        return instance.profile(directory, start, stop)

    def train_on(self, **kwargs) -> dict:
        return self.default.train_on(**kwargs)

    def peak(self, **kwargs) -> dict:
        return self.default.peak(**kwargs)

    def flops(self, **kwargs) -> dict:
        return self.default.flops(**kwargs)

    def time_to_accuracy(self, **kwargs) -> dict:
        reply = self.default.time_to_accuracy(**kwargs)
        return {**reply, "worker_seconds": time.perf_counter() - START}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("name", choices=sorted(CONTENDERS))
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--optimizer", default=None, help="a JAX contender's optimizer (default: the tutorial's SGD)")
    parser.add_argument("--learning-rate", type=float, default=None)
    args = parser.parse_args(argv)
    module_name, class_name, _ = CONTENDERS[args.name]
    try:
        from bench.common import load_data, serve

        factory = getattr(importlib.import_module(module_name), class_name)
        if args.optimizer or args.learning_rate:  # only the JAX contenders take another optimizer
            factory = functools.partial(factory, optimizer=args.optimizer, learning_rate=args.learning_rate)
        variants = Variants(factory, load_data(args.data_dir))
    except ImportError as err:
        print(json.dumps({"skipped": f"{type(err).__name__}: {err}"}), flush=True)
        return 0
    hello = {"ready": True, "startup_seconds": time.perf_counter() - START}
    if "jax" in sys.modules:  # how many devices a data-parallel contender may use
        hello["devices"] = len(sys.modules["jax"].devices())
    print(json.dumps(hello), flush=True)
    serve(variants)
    return 0


if __name__ == "__main__":
    sys.exit(main())
