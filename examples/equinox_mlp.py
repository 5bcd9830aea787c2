"""An Equinox MLP with dropout, trained by jaxlin as it is: `--model equinox_mlp:MLP`.

jaxlin recognises an `equinox.Module` (see `jaxlin.adapters`): it builds `MLP(image_shape, num_classes,
key=key)`, trains its floating-point arrays, and calls it per example (Equinox's convention), vmapped
over the batch, with a dropout `key` per example in training and `eqx.nn.inference_mode` to evaluate.
Images arrive as float32 `[H*W*C]` per example. From the command line, in this directory:

    jaxlin train --model equinox_mlp:MLP --optimizer adam --learning-rate 0.001

or run this file for a short fit from Python (MNIST from --data-dir or $JAXLIN_DATA_DIR):

    python equinox_mlp.py --steps 500
"""

from __future__ import annotations

import argparse
import math

import equinox as eqx
import jax


class MLP(eqx.Module):
    """inputs-256-K with ReLU, dropout (0.2) on the hidden layer."""

    hidden: eqx.nn.Linear
    dropout: eqx.nn.Dropout
    out: eqx.nn.Linear

    def __init__(self, image_shape, num_classes, *, key):
        k1, k2 = jax.random.split(key)
        self.hidden = eqx.nn.Linear(math.prod(image_shape), 256, key=k1)
        self.dropout = eqx.nn.Dropout(0.2)
        self.out = eqx.nn.Linear(256, num_classes, key=k2)

    def __call__(self, x, *, key=None):
        return self.out(self.dropout(jax.nn.relu(self.hidden(x)), key=key))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="training steps (default: %(default)s)")
    parser.add_argument("--data-dir", default=None, help="MNIST IDX files (default: $JAXLIN_DATA_DIR, else downloaded)")
    args = parser.parse_args(argv)

    from jaxlin import Config, fit, get_model, load_datasets

    data = load_datasets("mnist", args.data_dir)
    model = get_model("equinox_mlp:MLP", image_shape=data.image_shape, num_classes=data.num_classes)
    config = Config(optimizer="adam", learning_rate=1e-3, num_steps=args.steps, eval_every=args.steps)
    result = fit(config, data, model, progress=False)
    print(f"equinox_mlp:MLP: test accuracy {result.final['accuracy']:.2%} after {args.steps} steps")


if __name__ == "__main__":
    main()
