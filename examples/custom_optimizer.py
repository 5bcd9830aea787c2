"""An optimizer of your own: any optax GradientTransformation, with a schedule and gradient clipping.

From Python, `fit(..., optimizer=...)` takes it instead of the one the config names (this file's `main`).
From the command line, `--optimizer MODULE:NAME` names a factory that jaxlin calls with `learning_rate=`
(a number, or jaxlin's schedule when `--schedule` is given), here `make`:

    jaxlin train --optimizer custom_optimizer:make --learning-rate 0.003

Run this file for a short fit of the tutorial's linear model with a warm-up cosine schedule:

    python custom_optimizer.py --steps 1000
"""

from __future__ import annotations

import argparse

import optax


def make(learning_rate):
    """What `--optimizer custom_optimizer:make` builds: AdamW with its updates' global norm clipped to 1."""
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(learning_rate, weight_decay=1e-4))


def warmup_cosine_sgd(peak: float, num_steps: int) -> optax.GradientTransformation:
    """SGD with momentum whose rate rises linearly from 0 to `peak` over the first tenth of the steps, then
    follows a cosine down to 0 at `num_steps`; gradients clipped to a global norm of 1."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps=num_steps // 10,
                                                  decay_steps=max(num_steps, 1))
    return optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(schedule, momentum=0.9))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="training steps (default: %(default)s)")
    parser.add_argument("--data-dir", default=None, help="MNIST IDX files (default: $JAXLIN_DATA_DIR, else downloaded)")
    args = parser.parse_args(argv)

    from jaxlin import Config, fit, get_model, load_datasets

    data = load_datasets("mnist", args.data_dir)
    config = Config(num_steps=args.steps, eval_every=args.steps)
    result = fit(config, data, get_model("linear"), progress=False,
                 optimizer=warmup_cosine_sgd(0.5, args.steps))
    print(f"linear, warm-up cosine SGD ({result.optimizer}): test accuracy {result.final['accuracy']:.2%} "
          f"after {args.steps} steps")


if __name__ == "__main__":
    main()
