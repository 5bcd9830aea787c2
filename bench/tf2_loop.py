"""TensorFlow 2 at its best for these models: a `tf.function` whose `tf.range` loop trains
on device-resident data, with and without XLA (`jit_compile=True`). The linear model, the MLP and
jaxlin's CNN, built from the shared starting params (`bench.common.initial_params`) in jaxlin's own
layout: NHWC images, HWIO convolution weights, so the arrays load as they are."""

from __future__ import annotations

import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from bench.common import IMAGE_SIDE, initial_params, learning_rate, thread_settings, timed, train_until
from jaxlin.training.sampler import epoch_window


class Tf2Loop:
    framework = "tensorflow"

    def __init__(self, data: dict, jit_compile: bool = False):
        import tensorflow as tf

        self.tf, self.data, self.jit_compile = tf, data, jit_compile
        self.images_uint8 = tf.constant(data["train_uint8"])
        self.labels = tf.constant(data["train_labels"])
        self.num_examples = len(data["train_labels"])

    def info(self) -> dict:
        tf = self.tf
        return {"framework": "tensorflow", "version": tf.__version__,
                "device": ", ".join(d.name for d in tf.config.list_logical_devices()),
                "platform": platform.platform(), "threads": thread_settings(),
                "mode": f"tf.function, tf.range loop, jit_compile={self.jit_compile}"}

    def _variables(self, model: str):
        return [self.tf.Variable(array) for layer in initial_params(model) for array in layer]

    def _logits_fn(self, model: str, variables: list):
        """images (B, 784) float32 -> logits, through `variables` (weights, biases per layer, flattened)."""
        tf = self.tf
        if model == "cnn":  # jaxlin's CNN, NHWC as jaxlin computes it
            conv1_w, conv1_b, conv2_w, conv2_b, dense_w, dense_b, out_w, out_b = variables

            def cnn(images):
                x = tf.reshape(images, [-1, IMAGE_SIDE, IMAGE_SIDE, 1])
                for w, b in ((conv1_w, conv1_b), (conv2_w, conv2_b)):
                    x = tf.nn.relu(tf.nn.conv2d(x, w, strides=1, padding="SAME") + b)
                    x = tf.nn.max_pool2d(x, ksize=2, strides=2, padding="VALID")
                x = tf.nn.relu(tf.matmul(tf.reshape(x, [-1, dense_w.shape[0]]), dense_w) + dense_b)
                return tf.matmul(x, out_w) + out_b

            return cnn

        def dense(images):
            x = images
            for i in range(0, len(variables), 2):
                x = tf.matmul(x, variables[i]) + variables[i + 1]
                if i + 2 < len(variables):
                    x = tf.nn.relu(x)
            return x

        return dense

    def _build(self, model: str, batch_size: int):
        tf, lr = self.tf, learning_rate(model)
        variables = self._variables(model)
        logits_of = self._logits_fn(model, variables)

        # The data are arguments, not captured constants, which XLA would fold into the program.
        @tf.function(jit_compile=self.jit_compile)
        def train_chunk(all_images, all_labels, order, offset, num_steps):
            loss = tf.constant(0.0)
            for step in tf.range(num_steps):
                # A static size: XLA compiles a dynamic slice instead of one program per offset.
                indices = tf.slice(order, [offset + step * batch_size], [batch_size])
                images = tf.cast(tf.gather(all_images, indices), tf.float32) / 255.0
                labels = tf.gather(all_labels, indices)
                with tf.GradientTape() as tape:
                    loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                        labels=labels, logits=logits_of(images)))
                for variable, grad in zip(variables, tape.gradient(loss, variables)):
                    variable.assign_sub(lr * grad)
            return loss

        return variables, lambda *args: train_chunk(self.images_uint8, self.labels, *args)

    def _order(self, cache: dict, first_step: int, num_steps: int):
        """Per-epoch permutations made by TensorFlow, concatenated over the chunk's epochs."""
        tf = self.tf
        window = epoch_window(first_step, num_steps, self.batch_size, self.num_examples)
        if window.first_epoch not in cache:
            cache.clear()
            epochs = range(window.first_epoch, window.first_epoch + window.num_epochs)
            cache[window.first_epoch] = tf.concat([tf.random.shuffle(tf.range(self.num_examples), seed=e)
                                                   for e in epochs], axis=0)
        return cache[window.first_epoch], window.offset

    def setup(self, model: str, batch_size: int, num_steps: int, steps_per_call: int = 1000) -> dict:
        self.model, self.batch_size, self.num_steps = model, batch_size, num_steps
        self.steps_per_call = min(steps_per_call, num_steps)
        self.variables, self.train_chunk = self._build(model, batch_size)
        compile_seconds, _ = timed(self.run)  # first call traces (and with XLA compiles)
        warm_up, _ = timed(self.run)
        return {"compile_seconds": compile_seconds, "warm_up_seconds": warm_up}

    def run(self) -> dict:
        for variable, value in zip(self.variables, (a for layer in initial_params(self.model) for a in layer)):
            variable.assign(value)
        cache, tf = {}, self.tf
        start = time.perf_counter()
        for first_step in range(0, self.num_steps, self.steps_per_call):
            order, offset = self._order(cache, first_step, self.steps_per_call)
            loss = self.train_chunk(order, tf.constant(offset), tf.constant(self.steps_per_call))
        loss = float(loss.numpy())
        return {"seconds": time.perf_counter() - start, "loss": loss}

    def time_to_accuracy(self, model: str, batch_size: int, eval_every: int, max_steps: int,
                         target: float, order_file: str) -> dict:
        tf = self.tf
        self.batch_size = batch_size
        variables, train_chunk = self._build(model, batch_size)
        order = tf.constant(np.load(order_file).ravel())
        test_images, test_labels = tf.constant(self.data["test_images"]), self.data["test_labels"]

        logits_of = self._logits_fn(model, variables)
        # The CNN's activations for 10,000 images at once would take 1 GB: it is evaluated 1,000 at a time.
        chunk = 1000 if model == "cnn" else len(test_labels)

        def accuracy():
            logits = np.concatenate([logits_of(test_images[i:i + chunk]).numpy()
                                     for i in range(0, len(test_labels), chunk)])
            return int(np.sum(np.argmax(logits, axis=1) == test_labels)) / len(test_labels)

        return train_until(
            lambda start, count: train_chunk(order, tf.constant(start * batch_size), tf.constant(count)),
            accuracy, eval_every, max_steps, target)


class Tf2Xla(Tf2Loop):
    def __init__(self, data: dict):
        super().__init__(data, jit_compile=True)
