"""A Flax nnx MLP with dropout, trained by jaxlin as it is: `--model flax_nnx_mlp:MLP`.

jaxlin recognises a `flax.nnx.Module` (see `jaxlin.adapters`): it builds `MLP(num_classes=K,
rngs=nnx.Rngs(key))`, switches it with `model.eval()` to evaluate and `model.train()` to train, and seeds
its dropout stream from the run's seed and the step, so `--resume` continues bit for bit. Images arrive
as float32 `[batch, H*W*C]`. From the command line, in this directory:

    jaxlin train --model flax_nnx_mlp:MLP --optimizer adam --learning-rate 0.001

or run this file for a short fit from Python (MNIST from --data-dir or $JAXLIN_DATA_DIR):

    python flax_nnx_mlp.py --steps 500
"""

from __future__ import annotations

import argparse
import math

import jax
from flax import nnx


class MLP(nnx.Module):
    """inputs-256-K with ReLU and dropout (0.2) on the hidden layer."""

    def __init__(self, image_shape, num_classes, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(math.prod(image_shape), 256, rngs=rngs)
        self.dropout = nnx.Dropout(0.2, rngs=rngs)
        self.out = nnx.Linear(256, num_classes, rngs=rngs)

    def __call__(self, x):
        return self.out(self.dropout(jax.nn.relu(self.hidden(x))))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="training steps (default: %(default)s)")
    parser.add_argument("--data-dir", default=None, help="MNIST IDX files (default: $JAXLIN_DATA_DIR, else downloaded)")
    args = parser.parse_args(argv)

    from jaxlin import Config, fit, get_model, load_datasets

    data = load_datasets("mnist", args.data_dir)
    model = get_model("flax_nnx_mlp:MLP", image_shape=data.image_shape, num_classes=data.num_classes)
    config = Config(optimizer="adam", learning_rate=1e-3, num_steps=args.steps, eval_every=args.steps)
    result = fit(config, data, model, progress=False)
    print(f"flax_nnx_mlp:MLP: test accuracy {result.final['accuracy']:.2%} after {args.steps} steps")


if __name__ == "__main__":
    main()
