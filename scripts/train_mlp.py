"""The tutorial's promised next step: a multi-layer perceptron on the same data.

Same data, loss and loop as the linear model; only the config changes (layer
sizes, initialisation, optimizer). Prints the test accuracy and writes the usual
outputs to --output-dir.

    python scripts/train_mlp.py --data-dir ../shared/data/mnist
"""

import argparse
import sys

from jaxlin.config import Config, parse_hidden_sizes
from jaxlin.runs.train_run import train_and_evaluate

MLP_CONFIG = Config(model="mlp", hidden_sizes=(256,), activation="relu", optimizer="adam",
                    learning_rate=1e-3, batch_size=100, num_steps=5000, eval_every=500,
                    output_dir="mlp-run")


def _hidden_sizes(text: str) -> tuple[int, ...]:
    try:
        return parse_hidden_sizes(text)
    except ValueError as err:  # argparse shows an ArgumentTypeError's own message
        raise argparse.ArgumentTypeError(str(err)) from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="IDX directory (default: $JAXLIN_DATA_DIR, else the cache)")
    parser.add_argument("--output-dir", default=MLP_CONFIG.output_dir, help="default: %(default)s")
    parser.add_argument("--hidden-sizes", type=_hidden_sizes, default=MLP_CONFIG.hidden_sizes,
                        metavar="N[,N...]", help="default: 256")
    parser.add_argument("--num-steps", type=int, default=MLP_CONFIG.num_steps, help="default: %(default)s")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    config = MLP_CONFIG.replace(data_dir=args.data_dir, output_dir=args.output_dir,
                                hidden_sizes=args.hidden_sizes, num_steps=args.num_steps)
    train_and_evaluate(config.validate(), progress=not args.no_progress, mode="overwrite")
    return 0


if __name__ == "__main__":
    sys.exit(main())
