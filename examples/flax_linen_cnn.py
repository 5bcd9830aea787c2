"""A Flax linen CNN with batch norm and dropout, trained by jaxlin as it is: `--model flax_linen_cnn:CNN`.

jaxlin recognises a `flax.linen.Module` (see `jaxlin.adapters`): it builds `CNN(num_classes=K)`, calls it
with `train=False` to evaluate and `train=True` to train (the step's dropout key as the "dropout" stream,
the batch statistics updated and kept in the params, checkpoints and params.npz). Images arrive as
float32 `[batch, H*W*C]`; the module reshapes them. From the command line, in this directory:

    jaxlin train --model flax_linen_cnn:CNN --optimizer adam --learning-rate 0.001

or run this file for a short fit from Python (MNIST from --data-dir or $JAXLIN_DATA_DIR):

    python flax_linen_cnn.py --steps 200
"""

from __future__ import annotations

import argparse

from flax import linen as nn


class CNN(nn.Module):
    """Two 3x3 convolutions (16, 32 channels) with batch norm and 2x2 max pooling, dropout, the output layer."""

    num_classes: int = 10
    image_shape: tuple = (28, 28, 1)

    @nn.compact
    def __call__(self, x, train: bool):
        x = x.reshape(-1, *self.image_shape)
        for channels in (16, 32):
            x = nn.Conv(channels, (3, 3))(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
            x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.Dropout(0.25, deterministic=not train)(x.reshape(x.shape[0], -1))
        return nn.Dense(self.num_classes)(x)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps (default: %(default)s)")
    parser.add_argument("--data-dir", default=None, help="MNIST IDX files (default: $JAXLIN_DATA_DIR, else downloaded)")
    args = parser.parse_args(argv)

    from jaxlin import Config, fit, get_model, load_datasets

    data = load_datasets("mnist", args.data_dir)
    model = get_model("flax_linen_cnn:CNN", image_shape=data.image_shape, num_classes=data.num_classes)
    config = Config(optimizer="adam", learning_rate=1e-3, num_steps=args.steps, eval_every=args.steps)
    result = fit(config, data, model, progress=False)
    print(f"flax_linen_cnn:CNN: test accuracy {result.final['accuracy']:.2%} after {args.steps} steps")


if __name__ == "__main__":
    main()
