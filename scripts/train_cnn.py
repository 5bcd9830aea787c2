"""A third model through the same code: the classic MNIST CNN.

Two 3x3 convolutions (32 and 64 channels), each followed by 2x2 max pooling, a
dense layer of 256 and the output layer, trained with Adam. Same data, loss,
loop, checkpoints, evaluation and outputs as the linear model; only the config
changes. Prints the test accuracy and writes the usual outputs to --output-dir
(replacing a previous run of this script there).

    python scripts/train_cnn.py --data-dir ../shared/data/mnist
"""

import argparse
import sys

from jaxlin.config import Config
from jaxlin.runs.train_run import train_and_evaluate

# jaxlin's defaults choose the chunk form and who computes the convolutions (on a CPU: a host loop of
# one-step chunks, XLA's own convolutions; see jaxlin/runtime/chunk_form.py and cpu_convolutions.py).
CNN_CONFIG = Config(model="cnn", optimizer="adam", learning_rate=1e-3, batch_size=100, num_steps=2000,
                    eval_every=500, output_dir="cnn-run")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="IDX directory (default: $JAXLIN_DATA_DIR, else the cache)")
    parser.add_argument("--output-dir", default=CNN_CONFIG.output_dir, help="default: %(default)s")
    parser.add_argument("--num-steps", type=int, default=CNN_CONFIG.num_steps, help="default: %(default)s")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    config = CNN_CONFIG.replace(data_dir=args.data_dir, output_dir=args.output_dir, num_steps=args.num_steps)
    metrics = train_and_evaluate(config.validate(), progress=not args.no_progress, mode="overwrite")
    timings = metrics["timings"]
    print(f"CNN: {metrics['final_test_accuracy']:.2%} test accuracy after {config.num_steps} steps; "
          f"training {timings['train_seconds']:.0f} s, whole run {timings['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
