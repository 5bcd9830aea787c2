"""jaxlin against the TensorFlow reference: the same batch indices give the same model.

TensorFlow runs in its own process (bench/tf_reference.py); jaxlin trains here, on
both of its paths.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bench.common import shared_order
from bench.jax_contenders import make_accuracy_fn
from jaxlin.models import get_model
from jaxlin.training.trainer import make_fused_train, make_train_step

ROOT = Path(__file__).resolve().parents[1]
NUM_STEPS = 200


@pytest.fixture(scope="module")
def tf_result(mnist_dir, mnist, tmp_path_factory):
    pytest.importorskip("tensorflow")
    tmp = tmp_path_factory.mktemp("tf")
    order = shared_order(len(mnist.train), 100, NUM_STEPS, seed=7)
    np.save(tmp / "order.npy", order)
    done = subprocess.run(
        [sys.executable, "-m", "bench.tf_reference", "--data-dir", str(mnist_dir),
         "--order", str(tmp / "order.npy"), "--out", str(tmp / "tf.npz")],
        cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reply = json.loads(done.stdout.strip().splitlines()[-1])
    with np.load(tmp / "tf.npz") as arrays:
        weights = arrays["layers/0/w"], arrays["layers/0/b"]
    return order, weights, reply["test_accuracy"]


def _jaxlin(mnist, order, loop):
    model, optimizer = get_model("linear"), optax.sgd(0.5)
    params = model.init(jax.random.key(0))
    opt_state = optimizer.init(params)
    if loop == "fused":
        fused = make_fused_train(model.apply, optimizer)
        params, _, _ = fused(params, opt_state, jnp.asarray(mnist.train.images_uint8),
                             jnp.asarray(mnist.train.labels), jnp.asarray(order.ravel()), 0,
                             batch_size=order.shape[1], num_steps=len(order))
    else:
        step = make_train_step(model.apply, optimizer)
        for indices in order:
            params, opt_state, _ = step(params, opt_state, mnist.train.images[indices], mnist.train.labels[indices])
    accuracy = make_accuracy_fn(model.apply, jnp.asarray(mnist.test.images_uint8), jnp.asarray(mnist.test.labels))
    return params, accuracy(params)


@pytest.mark.parametrize("loop", ["per-step", "fused"])
def test_jaxlin_matches_the_tf_reference(mnist, tf_result, loop):
    order, (tf_w, tf_b), tf_accuracy = tf_result
    params, accuracy = _jaxlin(mnist, order, loop)
    w, b = np.asarray(params[0]["w"]), np.asarray(params[0]["b"])
    scale = np.abs(tf_w).max()
    assert np.abs(w - tf_w).max() <= 1e-5 * scale, np.abs(w - tf_w).max() / scale
    assert np.abs(b - tf_b).max() <= 1e-5 * np.abs(tf_b).max()
    assert accuracy == tf_accuracy
