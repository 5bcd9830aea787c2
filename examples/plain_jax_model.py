"""A model of your own in plain JAX: an object with `init(key) -> params` and `apply(params, images) -> logits`.

jaxlin calls `TinyMLP(image_shape=(H, W, C), num_classes=K)` with the data's shape and class count, and
feeds `apply` float32 images `[batch, H*W*C]` in [0, 1]. From the command line, in this directory (or with
it on PYTHONPATH):

    jaxlin train --model plain_jax_model:TinyMLP --optimizer adam --learning-rate 0.001

or run this file for a short fit from Python (MNIST from --data-dir or $JAXLIN_DATA_DIR):

    python plain_jax_model.py --steps 500
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp


class TinyMLP:
    """One hidden ReLU layer; He-normal weights (a random init: jaxlin passes each run's key)."""

    def __init__(self, image_shape, num_classes, hidden: int = 64):
        self.inputs = image_shape[0] * image_shape[1] * image_shape[2]
        self.hidden, self.num_classes = hidden, num_classes

    def init(self, key):
        k1, k2 = jax.random.split(key)
        return {"hidden": {"w": jax.random.normal(k1, (self.inputs, self.hidden)) * jnp.sqrt(2 / self.inputs),
                           "b": jnp.zeros(self.hidden)},
                "out": {"w": jax.random.normal(k2, (self.hidden, self.num_classes)) * jnp.sqrt(2 / self.hidden),
                        "b": jnp.zeros(self.num_classes)}}

    def apply(self, params, images):
        hidden = jax.nn.relu(images @ params["hidden"]["w"] + params["hidden"]["b"])
        return hidden @ params["out"]["w"] + params["out"]["b"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="training steps (default: %(default)s)")
    parser.add_argument("--data-dir", default=None, help="MNIST IDX files (default: $JAXLIN_DATA_DIR, else downloaded)")
    args = parser.parse_args(argv)

    from jaxlin import Config, fit, get_model, load_datasets

    data = load_datasets("mnist", args.data_dir)
    model = get_model("plain_jax_model:TinyMLP")  # by reference, as --model takes it: checked with eval_shape
    config = Config(optimizer="adam", learning_rate=1e-3, num_steps=args.steps, eval_every=args.steps)
    result = fit(config, data, model, progress=False)
    print(f"plain_jax_model:TinyMLP: test accuracy {result.final['accuracy']:.2%} after {args.steps} steps")


if __name__ == "__main__":
    main()
