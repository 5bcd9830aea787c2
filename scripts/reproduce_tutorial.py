"""The TensorFlow MNIST linear-model tutorial, end to end through jaxlin.

Prints what the tutorial printed (data sizes, the first one-hot test labels,
test accuracy before training and after 1, 10 and 1,000 steps) and saves its
figures, metrics and params to --output-dir.

    python scripts/reproduce_tutorial.py --data-dir ../shared/data/mnist
"""

import argparse
import sys

import numpy as np

from jaxlin.config import Config
from jaxlin.data.datasets import Datasets, load_datasets
from jaxlin.runs.outputs import accuracy_line
from jaxlin.runs.train_run import train_and_evaluate

TUTORIAL_EVAL_STEPS = [0, 1, 10, 1000]


def print_data(data: Datasets) -> None:
    print("Size of:")
    print(f"- Training-set:\t\t{len(data.train)}")
    print(f"- Validation-set:\t{len(data.validation)}")
    print(f"- Test-set:\t\t{len(data.test)}")
    print(f"Test images: {data.test.images.shape} {data.test.images.dtype}, "
          f"labels one-hot: {data.test.one_hot_labels.shape}")
    with np.printoptions(precision=1):
        print("First five one-hot test labels:")
        print(data.test.one_hot_labels[:5])
    print(f"First five test class ids: {data.test.labels[:5]}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="IDX directory (default: $JAXLIN_DATA_DIR, else tfds)")
    parser.add_argument("--output-dir", default="tutorial-run", help="default: %(default)s")
    parser.add_argument("--num-steps", type=int, default=1000, help="default: %(default)s")
    args = parser.parse_args(argv)
    data = load_datasets("mnist", args.data_dir)
    print_data(data)
    config = Config(data_dir=args.data_dir, output_dir=args.output_dir, num_steps=args.num_steps)
    eval_steps = sorted({s for s in TUTORIAL_EVAL_STEPS if s <= args.num_steps} | {args.num_steps})
    metrics = train_and_evaluate(config, progress=False, eval_steps=eval_steps, log=lambda _: None, data=data,
                                 mode="overwrite")
    for evaluation in metrics["evaluations"]:
        step = evaluation["step"]
        when = "before training" if step == 0 else f"after {step} step{'s' if step > 1 else ''}"
        print(accuracy_line(evaluation["test_accuracy"], when))
    print(f"Figures, metrics.json and params.npz are in {args.output_dir}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
