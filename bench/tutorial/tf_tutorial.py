"""The TensorFlow tutorial as a plain script: imports, data, 1,000 steps of gradient descent at 0.5 on
batches of 100 from `next_batch`, one test evaluation; no figures. The benchmark times it as a whole
process (`python -m bench`, end-to-end rows). Run: `python bench/tutorial/tf_tutorial.py --data-dir DIR`.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))  # run as a file from anywhere
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from jaxlin.data.datasets import load_idx_dir
from bench.common import NextBatch


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--num-steps", type=int, default=1000)
    args = parser.parse_args()
    data = load_idx_dir(args.data_dir)
    train_images, test_images = data.train.images, data.test.images
    train_labels = np.eye(10, dtype=np.float32)[data.train.labels]
    test_labels = np.eye(10, dtype=np.float32)[data.test.labels]

    tf.compat.v1.disable_eager_execution()
    x = tf.compat.v1.placeholder(tf.float32, [None, 784])
    y_true = tf.compat.v1.placeholder(tf.float32, [None, 10])
    weights = tf.Variable(tf.zeros([784, 10]))
    biases = tf.Variable(tf.zeros([10]))
    logits = tf.matmul(x, weights) + biases
    cost = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=y_true, logits=logits))
    optimizer = tf.compat.v1.train.GradientDescentOptimizer(learning_rate=0.5).minimize(cost)
    correct = tf.equal(tf.argmax(logits, 1), tf.argmax(y_true, 1))
    accuracy = tf.reduce_mean(tf.cast(correct, tf.float32))

    next_batch = NextBatch(len(train_images))
    with tf.compat.v1.Session() as session:
        session.run(tf.compat.v1.global_variables_initializer())
        for _ in range(args.num_steps):
            indices = next_batch(100)
            session.run(optimizer, feed_dict={x: train_images[indices], y_true: train_labels[indices]})
        result = session.run(accuracy, feed_dict={x: test_images, y_true: test_labels})
    print(f"Accuracy on test-set: {result:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
