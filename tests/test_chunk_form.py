"""The fused loop's chunk form: a fixed rule (host loop for convolutions on a CPU, scan otherwise), recorded,
and the two forms train alike."""

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

from jaxlin.config import Config, ConfigError, resume_conflicts
from jaxlin.models import get_model
from jaxlin.runtime import chunk_form, cpu_convolutions
from jaxlin.training.trainer import fit, make_fused_train, make_update_fn

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


class _Device:
    def __init__(self, platform: str):
        self.platform = platform


class _Placement:
    def __init__(self, platform: str = "cpu"):
        self.devices = (_Device(platform),)
        self.mesh = None


@pytest.mark.parametrize("model, loop, platform, expected", [
    ("linear", "fused", "cpu", "scan"),
    ("mlp", "fused", "cpu", "scan"),
    ("cnn", "fused", "cpu", "host-loop"),
    ("cnn", "fused", "gpu", "scan"),
    ("cnn", "fused", "tpu", "scan"),
])
def test_auto_resolves_by_a_fixed_rule(model, loop, platform, expected):
    config = Config(model=model, loop=loop)
    assert chunk_form.choose(config, get_model(model), _Placement(platform)) == expected
    for explicit in ("scan", "host-loop"):  # --chunk-form overrides the rule
        chosen = chunk_form.choose(config.replace(chunk_form=explicit), get_model(model), _Placement(platform))
        assert chosen == explicit


class _NestedConvModel:
    """A user's model whose convolution sits inside a jit and a custom_vjp: the rule still finds it."""

    def init(self, key):
        return {"w": jax.random.normal(key, (3, 3, 1, 4)) * 0.1, "out": jnp.zeros((28 * 28 * 4, 10))}

    def apply(self, params, images):
        @jax.custom_vjp
        def conv(x, w):
            return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

        conv.defvjp(lambda x, w: (conv(x, w), (x, w)), lambda saved, g: (jnp.zeros_like(saved[0]),
                                                                          jnp.zeros_like(saved[1])))
        x = jax.jit(conv)(images.reshape(-1, 28, 28, 1), params["w"])
        return x.reshape(x.shape[0], -1) @ params["out"]


def test_a_convolution_is_found_at_any_depth_and_a_dense_model_has_none():
    from jaxlin.models import as_model

    assert chunk_form.has_convolution(as_model(_NestedConvModel(), "tests:nested", (28, 28, 1), 10))
    assert not chunk_form.has_convolution(get_model("mlp"))


def test_a_one_step_chunk_has_no_loop_and_a_longer_one_does():
    """JAX emits a scan of length 1 as a while loop; the host loop's one-step chunk must not have one."""
    model, optimizer = get_model("cnn"), optax.sgd(0.1)
    fused = make_fused_train(model.apply, optimizer, model=model)
    params = jax.eval_shape(model.init, jax.random.key(0))
    images = jax.ShapeDtypeStruct((200, 784), jnp.uint8)
    labels, order = jax.ShapeDtypeStruct((200,), jnp.int32), jax.ShapeDtypeStruct((200,), jnp.int32)
    state = jax.eval_shape(optimizer.init, params)

    def lowered(num_steps):
        return fused.lower(params, state, images, labels, order, 0, batch_size=100, num_steps=num_steps).as_text()

    assert "while" not in lowered(1)
    assert "while" in lowered(2)


def _fit(data, model, form, num_steps=6, **changes):
    # Plain SGD: Adam's first steps turn rounding-sized gradients into whole steps of the learning rate.
    config = Config(model="cnn" if model.name == "cnn" else "linear", optimizer="sgd", learning_rate=0.05,
                    num_steps=num_steps, steps_per_call=3, eval_every=num_steps, chunk_form=form, **changes)
    return fit(config, data, model, progress=False)


@pytest.mark.slow
def test_host_loop_and_scan_train_the_cnn_alike_and_the_form_is_recorded(tiny_data):
    model = get_model("cnn")
    host, scan = _fit(tiny_data, model, "host-loop"), _fit(tiny_data, model, "scan")
    assert host.config.chunk_form == "host-loop" and scan.config.chunk_form == "scan"
    for a, b in zip(jax.tree.leaves(host.params), jax.tree.leaves(scan.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    auto = _fit(tiny_data, model, "auto", num_steps=3)
    assert auto.config.chunk_form == "host-loop"  # the CPU rules, resolved and recorded
    assert auto.config.cpu_convolutions == "xla"


def test_auto_is_recorded_as_scan_for_a_dense_model(tiny_data):
    result = _fit(tiny_data, get_model("linear"), "auto", num_steps=3)
    assert result.config.chunk_form == "scan"


@pytest.mark.slow
def test_a_stateful_conv_model_gets_each_steps_dropout_key_in_the_host_loop(tiny_data):
    """The Flax CNN with dropout and batch norm: each host-loop call must take its own global step (the
    dropout key), so the two forms train to the same params."""
    pytest.importorskip("flax")
    sys.path.insert(0, str(EXAMPLES))
    try:
        model = get_model("flax_linen_cnn:CNN", image_shape=(28, 28, 1), num_classes=10)
    finally:
        sys.path.remove(str(EXAMPLES))
    assert chunk_form.has_convolution(model)
    host, scan = _fit(tiny_data, model, "host-loop"), _fit(tiny_data, model, "scan")
    # Batch norm over a small batch carries rounding further than the plain CNN; a wrong dropout key differs
    # by several times more (1.6e-3 here, measured by giving every step the first step's key).
    for a, b in zip(jax.tree.leaves(host.params), jax.tree.leaves(scan.params)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-4)


def test_a_resume_that_changes_the_chunk_form_is_refused():
    saved = Config(model="cnn", chunk_form="host-loop")
    assert any("--chunk-form scan" in c for c in resume_conflicts(saved, saved.replace(chunk_form="scan")))
    assert resume_conflicts(saved, saved) == []


@pytest.mark.slow
def test_jaxlin_train_cnn_records_the_host_loop_and_resumes_to_the_same_bits(tiny_data_dir, tmp_path):
    exe = Path(sys.executable).with_name("jaxlin")
    env = {**os.environ, "JAXLIN_CACHE_DIR": str(tmp_path / "cache")}
    common = ["--data-dir", str(tiny_data_dir), "--model", "cnn", "--optimizer", "adam", "--learning-rate",
              "0.001", "--eval-every", "2", "--checkpoint-every", "2", "--no-progress", "--no-figures"]

    def train(out, *more):
        done = subprocess.run([str(exe), "train", "--output-dir", str(out), *common, *more], env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return done

    train(tmp_path / "straight", "--num-steps", "4")
    train(tmp_path / "resumed", "--num-steps", "2")
    train(tmp_path / "resumed", "--num-steps", "4", "--resume")
    metrics = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert metrics["config"]["chunk_form"] == "host-loop" and metrics["config"]["cpu_convolutions"] == "xla"
    with np.load(tmp_path / "straight" / "params.npz") as a, np.load(tmp_path / "resumed" / "params.npz") as b:
        for name in a.files:
            np.testing.assert_array_equal(a[name], b[name])
    refused = subprocess.run([str(exe), "train", "--output-dir", str(tmp_path / "resumed"), *common,
                              "--num-steps", "6", "--resume", "--chunk-form", "scan"], env=env,
                             capture_output=True, text=True, timeout=600)
    assert refused.returncode != 0 and "--chunk-form scan" in refused.stderr


# --cpu-convolutions: who computes a CPU's convolutions (runtime/cpu_convolutions.py).

@pytest.mark.parametrize("model, platform, expected", [
    ("cnn", "cpu", "xla"), ("mlp", "cpu", "ynnpack"), ("linear", "cpu", "ynnpack"), ("cnn", "gpu", "ynnpack")])
def test_cpu_convolutions_resolve_by_a_fixed_rule(model, platform, expected):
    config = Config(model=model)
    assert cpu_convolutions.choose(config, get_model(model), _Placement(platform)) == expected
    chosen = cpu_convolutions.choose(config.replace(cpu_convolutions="ynnpack"), get_model(model), _Placement(platform))
    assert chosen == "ynnpack"


def test_the_option_keeps_the_cnns_convolutions_from_ynnpack():
    def compiled(name, options):
        model, optimizer = get_model(name), optax.sgd(0.1)
        params = jax.eval_shape(model.init, jax.random.key(0))
        lowered = jax.jit(make_update_fn(model.apply, optimizer)).lower(
            params, jax.eval_shape(optimizer.init, params), jax.ShapeDtypeStruct((100, 784), jnp.float32),
            jax.ShapeDtypeStruct((100,), jnp.int32))
        return lowered.compile(options).as_text()

    xla = cpu_convolutions.compiler_options("xla")
    assert xla and cpu_convolutions.compiler_options("ynnpack") == {}
    assert cpu_convolutions.compiler_options("xla", platform="gpu") == {}
    default, kept = compiled("cnn", {}), compiled("cnn", xla)
    assert kept.count("__ynn_fusion") < default.count("__ynn_fusion")
    assert "convolution(" in "".join(line for line in kept.splitlines() if "ROOT" not in line)


def test_an_xla_without_the_option_resolves_auto_to_ynnpack_and_refuses_xla(monkeypatch):
    monkeypatch.setattr(cpu_convolutions, "option_available", lambda: False)
    config = Config(model="cnn")
    assert cpu_convolutions.choose(config, get_model("cnn"), _Placement()) == "ynnpack"
    with pytest.raises(ConfigError, match="--cpu-convolutions xla"):
        cpu_convolutions.choose(config.replace(cpu_convolutions="xla"), get_model("cnn"), _Placement())


def test_the_resolved_choice_is_recorded(tiny_data):
    assert _fit(tiny_data, get_model("linear"), "auto", num_steps=2).config.cpu_convolutions == "ynnpack"


@pytest.mark.parametrize("model, form, convolutions", [("cnn", "host-loop", "xla"), ("linear", "scan", "ynnpack")])
def test_a_sweep_resolves_and_records_both_rules_as_train_does(tiny_data, model, form, convolutions):
    from jaxlin.runtime.devices import resolve_placement
    from jaxlin.training.sweep import Grid, SweepTrainer

    base = Config(model=model, learning_rate=0.1)
    trainer = SweepTrainer(base, Grid(learning_rates=(0.1, 0.2)).members(base), tiny_data, get_model(model),
                           resolve_placement())
    assert (trainer.config.chunk_form, trainer.config.cpu_convolutions) == (form, convolutions)


@pytest.mark.slow
def test_jaxlin_sweep_records_the_resolved_forms_in_sweep_json_and_the_best_run(tiny_data_dir, tmp_path):
    exe = Path(sys.executable).with_name("jaxlin")
    out = tmp_path / "sweep"
    done = subprocess.run([str(exe), "sweep", "--data-dir", str(tiny_data_dir), "--model", "cnn", "--learning-rates",
                           "0.01,0.02", "--num-steps", "2", "--eval-every", "2", "--checkpoint-every", "0",
                           "--no-progress", "--output-dir", str(out)],
                          env={**os.environ, "JAXLIN_CACHE_DIR": str(tmp_path / "cache")},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    for path in (out / "sweep.json", out / "best" / "metrics.json"):
        record = json.loads(path.read_text())
        assert (record["config"]["chunk_form"], record["config"]["cpu_convolutions"]) == ("host-loop", "xla")


def test_the_runs_first_lines_say_what_the_rules_chose(tiny_data):
    from jaxlin.runtime.devices import resolve_placement
    from jaxlin.runs.train_run import describe_loop

    placement = resolve_placement()
    assert describe_loop(Config(model="cnn"), get_model("cnn"), placement) == \
        "fused loop (a host loop of one-step chunks; XLA's own convolutions)"
    assert describe_loop(Config(), get_model("linear"), placement) == "fused loop"
    assert describe_loop(Config(cpu_convolutions="xla"), get_model("linear"), placement) == "fused loop"
    assert describe_loop(Config(model="cnn", loop="per-step", cpu_convolutions="ynnpack"), get_model("cnn"),
                         placement) == "per-step loop"


def test_evaluation_gets_xla_convolutions_by_the_same_rule():
    from jaxlin.training.evaluate import make_predict_fn

    batches = jnp.zeros((2, 4, 784), jnp.uint8)
    for name, expected in (("cnn", cpu_convolutions.compiler_options("xla")), ("mlp", {})):
        model = get_model(name)
        params = model.init(jax.random.key(0))
        predict = make_predict_fn(model.apply)
        assert cpu_convolutions.evaluation_options(lambda p, b, apply=model.apply: apply(p, b[0] / 255.0), params,
                                                   batches) == expected
        assert predict(params, batches).shape == (8,)
