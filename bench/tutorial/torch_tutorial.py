"""The tutorial in PyTorch as a plain script: imports, data, 1,000 steps of SGD at 0.5 on batches of 100
from `next_batch`, one test evaluation; no figures. Timed as a whole process by `python -m bench`
(end-to-end rows). Run: `python bench/tutorial/torch_tutorial.py --data-dir DIR`.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))  # run as a file from anywhere

import torch

from jaxlin.data.datasets import load_idx_dir
from bench.common import NextBatch


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--num-steps", type=int, default=1000)
    args = parser.parse_args()
    data = load_idx_dir(args.data_dir)
    train_images = torch.from_numpy(data.train.images)
    train_labels = torch.from_numpy(data.train.labels.astype("int64"))
    model = torch.nn.Linear(784, 10)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    next_batch = NextBatch(len(train_labels))
    for _ in range(args.num_steps):
        indices = torch.from_numpy(next_batch(100))
        loss = torch.nn.functional.cross_entropy(model(train_images[indices]), train_labels[indices])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predictions = model(torch.from_numpy(data.test.images)).argmax(dim=1).numpy()
    print(f"Accuracy on test-set: {(predictions == data.test.labels).mean():.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
