"""Your own data from arrays: `Datasets.from_arrays` takes NumPy images and labels as they come.

Images may be uint8 (or integers) in 0..255, or floats in [0, 1] (never divided by 255 a second time),
shaped (n, H, W), (n, H, W, C) or (n, features); labels are integer class ids. Anything else is one
`DataError` naming what is wrong. This file makes a synthetic set (no download): each of 10 classes lights
its own band of rows in a 28x28 image, with noise, as floats in [0, 1]; then it trains on them:

    python arrays_dataset.py --steps 200
"""

from __future__ import annotations

import argparse

import numpy as np


def synthetic_images(num: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(num, 28, 28) float32 images in [0, 1] and their labels 0..9: class k brightens rows 2k+4 and 2k+5."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, num)
    images = rng.uniform(0.0, 0.6, (num, 28, 28)).astype(np.float32)
    rows = 4 + 2 * labels
    images[np.arange(num), rows, :] = 1.0
    images[np.arange(num), rows + 1, :] = 1.0
    return images, labels


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps (default: %(default)s)")
    args = parser.parse_args(argv)

    from jaxlin import Config, Datasets, fit, get_model

    train_images, train_labels = synthetic_images(3000, seed=0)
    test_images, test_labels = synthetic_images(1000, seed=1)
    # The first 500 training examples validate (the tutorial's 5,000 would leave too few to train on).
    data = Datasets.from_arrays(train_images, train_labels, test_images, test_labels, validation_size=500)
    result = fit(Config(num_steps=args.steps, eval_every=args.steps, batch_size=50), data, get_model("linear"),
                 progress=False)
    print(f"arrays: train {len(data.train)}, validation {len(data.validation)}, test {len(data.test)}; "
          f"linear model, test accuracy {result.final['accuracy']:.2%} after {args.steps} steps")


if __name__ == "__main__":
    main()
