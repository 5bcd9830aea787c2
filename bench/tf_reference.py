"""The tutorial's program on TensorFlow 2, as faithfully as it runs there: `tf.compat.v1`
graph mode, placeholders, zero-initialised Variables, `softmax_cross_entropy_with_logits`,
`GradientDescentOptimizer(0.5)`, and `Session.run` with a `feed_dict` of batches of 100
from a host-side `next_batch`.

Also runnable on its own to train on given batch indices, for the equivalence test:

    python -m bench.tf_reference --data-dir DIR --order order.npy --out params.npz
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from bench.common import (DENSE_MODELS, NextBatch, initial_params, learning_rate, load_data, thread_settings,
                          timed, train_until)


def _tf():
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    return tf.compat.v1


class Graph:
    """The tutorial's graph; an MLP differs only in its hidden layer."""

    def __init__(self, tf, model: str, seed: int = 0):
        self.tf = tf
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.x = tf.placeholder(tf.float32, [None, 784], name="x")
            self.y_true = tf.placeholder(tf.float32, [None, 10], name="y_true")
            self.variables = []
            layer = self.x
            params = initial_params(model, seed)
            for i, (w, b) in enumerate(params):
                # The tutorial: tf.Variable(tf.zeros(...)); the MLP starts from the shared He init.
                weights = tf.Variable(tf.zeros(w.shape) if model == "linear" else tf.constant(w), name=f"w{i}")
                biases = tf.Variable(tf.zeros(b.shape), name=f"b{i}")
                self.variables += [weights, biases]
                layer = tf.matmul(layer, weights) + biases
                if i < len(params) - 1:
                    layer = tf.nn.relu(layer)
            logits = layer
            cross_entropy = tf.nn.softmax_cross_entropy_with_logits_v2(logits=logits, labels=self.y_true)
            self.cost = tf.reduce_mean(cross_entropy)
            self.optimizer = tf.train.GradientDescentOptimizer(learning_rate=learning_rate(model)).minimize(self.cost)
            self.y_pred_cls = tf.argmax(tf.nn.softmax(logits), axis=1)
            self.init = tf.global_variables_initializer()
        self.session = tf.Session(graph=self.graph)
        self.session.run(self.init)

    def reset(self) -> None:
        self.session.run(self.init)

    def feed(self, images, one_hot):
        return {self.x: images, self.y_true: one_hot}

    def test_accuracy(self, data) -> float:
        """Counted exactly (a float32 mean in the graph would round the ratio)."""
        predictions = self.session.run(self.y_pred_cls, {self.x: data["test_images"]})
        return int(np.sum(predictions == data["test_labels"])) / len(predictions)


class TfReference:
    framework = "tensorflow"

    def __init__(self, data: dict):
        self.tf = _tf()
        self.data = data
        self.one_hot = np.eye(10, dtype=np.float32)[data["train_labels"]]

    def info(self) -> dict:
        import tensorflow

        devices = [d.name for d in tensorflow.config.list_logical_devices()]
        return {"framework": "tensorflow", "version": tensorflow.__version__, "device": ", ".join(devices),
                "platform": platform.platform(), "threads": thread_settings(),
                "mode": "tf.compat.v1 graph, Session.run + feed_dict"}

    def setup(self, model: str, batch_size: int, num_steps: int) -> dict:
        build_seconds, self.graph = timed(lambda: Graph(self.tf, model))
        self.batch_size, self.num_steps = batch_size, num_steps
        warm_up, _ = timed(self.run)
        return {"compile_seconds": build_seconds, "warm_up_seconds": warm_up}

    def run(self) -> dict:
        self.graph.reset()
        next_batch = NextBatch(len(self.data["train_labels"]))
        images, session = self.data["train_images"], self.graph.session
        start = time.perf_counter()
        for _ in range(self.num_steps):
            indices = next_batch(self.batch_size)  # the tutorial: data.train.next_batch(batch_size)
            session.run(self.graph.optimizer, feed_dict=self.graph.feed(images[indices], self.one_hot[indices]))
        seconds = time.perf_counter() - start
        loss = session.run(self.graph.cost, feed_dict=self.graph.feed(images[indices], self.one_hot[indices]))
        return {"seconds": seconds, "loss": float(loss)}

    def train_on(self, model: str, order_file: str, out_file: str) -> dict:
        graph = Graph(self.tf, model)
        self._train_on_order(graph, np.load(order_file))
        values = graph.session.run(graph.variables)
        arrays = {f"layers/{i // 2}/{'wb'[i % 2]}": v for i, v in enumerate(values)}
        np.savez(out_file, **arrays)
        return {"test_accuracy": graph.test_accuracy(self.data)}

    def _train_on_order(self, graph: Graph, order: np.ndarray) -> None:
        images = self.data["train_images"]
        for indices in order:
            graph.session.run(graph.optimizer, feed_dict=graph.feed(images[indices], self.one_hot[indices]))

    def time_to_accuracy(self, model: str, batch_size: int, eval_every: int, max_steps: int,
                         target: float, order_file: str) -> dict:
        graph, order = Graph(self.tf, model), np.load(order_file)
        return train_until(lambda start, count: self._train_on_order(graph, order[start:start + count]),
                           lambda: graph.test_accuracy(self.data), eval_every, max_steps, target)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Train the TF reference on given batch indices.")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--order", required=True, help=".npy of batch indices, shape (num_steps, batch_size)")
    parser.add_argument("--model", default="linear", choices=DENSE_MODELS)
    parser.add_argument("--out", required=True, help=".npz for the trained weights")
    args = parser.parse_args(argv)
    reply = TfReference(load_data(args.data_dir)).train_on(args.model, args.order, args.out)
    print(json.dumps(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
