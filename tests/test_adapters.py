"""Flax (linen, nnx) and Equinox modules as jaxlin models (`jaxlin.adapters`): trained through the fused
loop and the command line, with dropout keys and batch-norm statistics threaded, checkpointed and resumed
bit for bit; anything else refused in one line; jaxlin never imports the libraries itself."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("flax")
pytest.importorskip("equinox")

JAXLIN = Path(sys.executable).with_name("jaxlin")

MODULE = '''
import math

import equinox as eqx
import jax
from flax import linen as nn
from flax import nnx


class LinenBN(nn.Module):
    """Dense, batch norm, dropout, dense: both kinds of training-mode behaviour."""
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.BatchNorm(use_running_average=not train, momentum=0.5)(nn.Dense(16)(x))
        x = nn.Dropout(0.5, deterministic=not train)(nn.relu(x))
        return nn.Dense(self.num_classes)(x)


class LinenDeterministic(nn.Module):
    """Dropout switched by Flax's own name for it, `deterministic` (True: evaluation)."""
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        return nn.Dense(self.num_classes)(nn.Dropout(0.5, deterministic=deterministic)(x))


class LinenDeterministicFalse(LinenDeterministic):
    """The same, its switch defaulting to training: evaluation must still pass deterministic=True."""

    @nn.compact
    def __call__(self, x, deterministic: bool = False):
        return nn.Dense(self.num_classes)(nn.Dropout(0.5, deterministic=deterministic)(x))


class LinenTraining(nn.Module):
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, training: bool = False):
        return nn.Dense(self.num_classes)(nn.Dropout(0.5, deterministic=not training)(x))


class LinenUnknownSwitch(nn.Module):
    """Dropout switched by an argument jaxlin does not know: on in evaluation, so refused."""
    num_classes: int = 10

    @nn.compact
    def __call__(self, x, mode: bool = False):
        return nn.Dense(self.num_classes)(nn.Dropout(0.5, deterministic=mode)(x))


class LinenCNN(nn.Module):
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x.reshape(-1, 28, 28, 1)))
        x = nn.max_pool(x, (4, 4), (4, 4))
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


class NnxDropout(nnx.Module):
    def __init__(self, image_shape, num_classes, *, rngs):
        self.hidden = nnx.Linear(math.prod(image_shape), 16, rngs=rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)
        self.out = nnx.Linear(16, num_classes, rngs=rngs)

    def __call__(self, x):
        return self.out(self.dropout(jax.nn.relu(self.hidden(x))))


class NnxBatchNorm(nnx.Module):
    def __init__(self, num_classes, *, rngs):
        self.hidden = nnx.Linear(784, 16, rngs=rngs)
        self.norm = nnx.BatchNorm(16, momentum=0.5, rngs=rngs)
        self.out = nnx.Linear(16, num_classes, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.norm(self.hidden(x))))


class NnxLinear(nnx.Module):
    def __init__(self, num_classes, *, rngs):
        self.out = nnx.Linear(784, num_classes, rngs=rngs)

    def __call__(self, x):
        return self.out(x)


class EqxMLP(eqx.Module):
    mlp: eqx.nn.MLP
    dropout: eqx.nn.Dropout

    def __init__(self, num_classes, *, key):
        self.mlp = eqx.nn.MLP(784, num_classes, 16, 1, key=key)
        self.dropout = eqx.nn.Dropout(0.3)

    def __call__(self, x, *, key=None):
        return self.mlp(self.dropout(x, key=key))


class EqxBatchNorm(eqx.Module):
    norm: eqx.nn.BatchNorm

    def __init__(self, *, key):
        self.norm = eqx.nn.BatchNorm(784, axis_name="batch")

    def __call__(self, x, state):
        return self.norm(x, state)


class Torchish:
    """Neither jaxlin's protocol nor a Flax or Equinox module."""
    def forward(self, x):
        return x


torchish = Torchish()
'''


@pytest.fixture
def workdir(tmp_path, tiny_data_dir, monkeypatch):
    (tmp_path / "adapted.py").write_text(MODULE)
    monkeypatch.setenv("JAXLIN_DATA_DIR", str(tiny_data_dir))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _jaxlin(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(JAXLIN), *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


def _images(n=8):
    return jax.random.uniform(jax.random.key(1), (n, 784))


def test_dropout_is_active_in_training_and_off_in_evaluation(workdir):
    from jaxlin.models import get_model

    for reference in ("adapted:NnxDropout", "adapted:EqxMLP", "adapted:LinenBN", "adapted:LinenDeterministic",
                      "adapted:LinenDeterministicFalse", "adapted:LinenTraining"):
        model = get_model(reference)
        assert model.train_apply is not None, reference
        params, images = model.init(jax.random.key(0)), _images()
        evaluated = model.apply(params, images)
        np.testing.assert_array_equal(evaluated, model.apply(params, images))  # deterministic
        first, _ = model.train_apply(params, images, jax.random.key(1))
        second, _ = model.train_apply(params, images, jax.random.key(2))
        again, _ = model.train_apply(params, images, jax.random.key(1))
        assert not np.allclose(first, second) and not np.allclose(first, evaluated), reference
        np.testing.assert_array_equal(first, again)  # the key alone decides the masks


def test_only_trained_leaves_reach_the_optimizer(workdir):
    from jaxlin.models import get_model

    model = get_model("adapted:LinenBN")
    params = model.init(jax.random.key(0))
    assert set(params) == {"params", "batch_stats"}
    trained = model.trained_part(params)
    assert len(trained) == len(jax.tree.leaves(params["params"]))
    _, updated = model.train_apply(params, _images(), jax.random.key(0))
    assert not np.allclose(updated["batch_stats"]["BatchNorm_0"]["mean"], params["batch_stats"]["BatchNorm_0"]["mean"])
    rebuilt = model.with_trained(updated, trained)  # the statistics kept, the trained leaves replaced
    np.testing.assert_array_equal(rebuilt["batch_stats"]["BatchNorm_0"]["mean"],
                                  updated["batch_stats"]["BatchNorm_0"]["mean"])
    np.testing.assert_array_equal(rebuilt["params"]["Dense_0"]["kernel"], params["params"]["Dense_0"]["kernel"])
    for reference in ("adapted:LinenCNN", "adapted:NnxLinear"):  # no switch, no state: trained as any jaxlin model
        plain = get_model(reference)
        assert plain.train_apply is None and plain.trained_part(params) is params, reference


def test_nnx_batch_statistics_are_state_updated_in_training_only(workdir):
    from jaxlin.models import get_model

    model = get_model("adapted:NnxBatchNorm")
    params = model.init(jax.random.key(0))
    assert set(params) == {"params", "state"} and set(params["state"]["norm"]) == {"mean", "var"}
    assert params["params"]["hidden"]["kernel"].shape == (784, 16)  # named by the module's attributes
    _, updated = model.train_apply(params, _images(), jax.random.key(0))
    assert not np.allclose(updated["state"]["norm"]["mean"], params["state"]["norm"]["mean"])
    np.testing.assert_array_equal(updated["params"]["hidden"]["kernel"], params["params"]["hidden"]["kernel"])
    assert len(model.trained_part(params)) == len(jax.tree.leaves(params["params"]))


def test_what_is_not_a_model_is_refused_in_one_line(workdir):
    from jaxlin.errors import JaxlinError
    from jaxlin.models import get_model

    for reference, message in [("adapted:torchish", "not a model"),
                               ("adapted:EqxBatchNorm", "Equinox modules with state .* are not supported"),
                               ("adapted:LinenUnknownSwitch", "^--model adapted:LinenUnknownSwitch: it draws random "
                                "numbers .* give it an argument train, training, is_training or deterministic")]:
        with pytest.raises(JaxlinError, match=message) as caught:
            get_model(reference)
        assert "\n" not in str(caught.value)


def test_the_weights_figure_is_skipped_for_a_flax_model(workdir):
    from jaxlin.models import get_model

    model = get_model("adapted:LinenCNN")
    assert model.first_dense_weights(model.init(jax.random.key(0))) is None
    # Even a model claiming a dense first layer gets None, not a crash, for params of another layout.
    assert model._replace(first_layer_dense=True).first_dense_weights({"params": {}}) is None


def test_a_stateful_model_trains_through_the_fused_and_per_step_loops_alike(workdir, tiny_data):
    from jaxlin.config import Config
    from jaxlin.models import get_model
    from jaxlin.training.trainer import fit

    model = get_model("adapted:LinenBN")
    # SGD: Adam would magnify the float noise in the near-zero gradient of the bias before the batch norm.
    results = [fit(Config(model="adapted:LinenBN", num_steps=4, eval_every=4, batch_size=32, optimizer="sgd",
                          learning_rate=0.1, loop=loop), tiny_data, model, progress=False)
               for loop in ("fused", "per-step")]
    start = model.init(jax.random.split(jax.random.key(0))[0])
    for result in results:
        stats = result.params["batch_stats"]["BatchNorm_0"]["mean"]
        assert not np.allclose(stats, start["batch_stats"]["BatchNorm_0"]["mean"])
    for fused, stepped in zip(jax.tree.leaves(results[0].params), jax.tree.leaves(results[1].params)):
        np.testing.assert_allclose(fused, stepped, atol=1e-4)  # the same keys and batches each step


@pytest.mark.slow
def test_fit_takes_a_module_or_an_object_with_init_and_apply_as_it_is(workdir, tiny_data):
    """From Python, what --model takes works given directly: wrapped and built for the data, same as by reference."""
    import adapted
    from jaxlin.config import Config
    from jaxlin.models import get_model
    from jaxlin.training.trainer import fit

    config = Config(num_steps=3, eval_every=3, batch_size=32, optimizer="sgd", learning_rate=0.1)
    given = fit(config, tiny_data, adapted.LinenBN(num_classes=10), progress=False)
    by_reference = fit(config.replace(model="adapted:LinenBN"), tiny_data, get_model("adapted:LinenBN"),
                       progress=False)
    for a, b in zip(jax.tree.leaves(given.params), jax.tree.leaves(by_reference.params)):
        np.testing.assert_array_equal(a, b)
    assert given.final["accuracy"] is not None


def test_flax_imports_only_with_a_users_module():
    code = ("import sys, jaxlin; from jaxlin.models import get_model; get_model('mlp'); "
            "print(sorted(m for m in ('flax', 'equinox') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("reference", ["adapted:LinenBN", "adapted:LinenCNN", "adapted:EqxMLP"])
def test_flax_and_equinox_models_through_the_command_line(workdir, reference):
    out = workdir / "run"
    trained = _jaxlin(workdir, "train", "--model", reference, "--optimizer", "adam", "--learning-rate", "0.003",
                      "--num-steps", "6", "--eval-every", "3", "--batch-size", "32", "--output-dir", str(out),
                      "--no-progress")
    assert trained.returncode == 0, trained.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    with np.load(out / "params.npz") as stored:
        names = set(stored.files)
    if reference == "adapted:LinenBN":  # the statistics are in the params file, moved from their start
        assert "layers/batch_stats/BatchNorm_0/mean" in names and "layers/batch_stats/BatchNorm_0/var" in names
        with np.load(out / "params.npz") as stored:
            assert np.abs(stored["layers/batch_stats/BatchNorm_0/mean"]).max() > 0
    evaluated = _jaxlin(workdir, "evaluate", str(out / "params.npz"), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["test_accuracy"] == metrics["final_test_accuracy"]


@pytest.mark.slow
def test_an_nnx_model_with_dropout_resumes_bit_for_bit(workdir):
    common = ["--model", "adapted:NnxDropout", "--optimizer", "adam", "--learning-rate", "0.003", "--batch-size",
              "32", "--eval-every", "2", "--no-progress", "--no-figures"]
    first = _jaxlin(workdir, "train", *common, "--num-steps", "4", "--output-dir", "stopped")
    assert first.returncode == 0, first.stderr
    resumed = _jaxlin(workdir, "train", "--resume", "--output-dir", "stopped", "--num-steps", "8")
    assert resumed.returncode == 0, resumed.stderr
    straight = _jaxlin(workdir, "train", *common, "--num-steps", "8", "--output-dir", "straight")
    assert straight.returncode == 0, straight.stderr
    with np.load(workdir / "stopped" / "params.npz") as a, np.load(workdir / "straight" / "params.npz") as b:
        arrays = [name for name in a.files if not name.startswith("__")]
        assert arrays and all(np.array_equal(a[name], b[name]) for name in arrays)
        start = np.asarray(jax.tree.leaves(_nnx_start())[0])
        assert not np.array_equal(a[arrays[0]], start)  # it trained


def _nnx_start():
    from jaxlin.models import get_model
    from jaxlin.training.trainer import run_keys

    return get_model("adapted:NnxDropout").init(run_keys(0)[0])


@pytest.mark.slow
def test_a_sweep_of_a_model_with_batch_norm_and_dropout(workdir):
    done = _jaxlin(workdir, "sweep", "--model", "adapted:LinenBN", "--optimizer", "adam", "--learning-rates",
                   "0.001,0.01", "--num-steps", "4", "--batch-size", "32", "--output-dir", "sweep", "--no-progress")
    assert done.returncode == 0, done.stderr
    with np.load(workdir / "sweep" / "best" / "params.npz") as stored:
        assert np.abs(stored["layers/batch_stats/BatchNorm_0/mean"]).max() > 0


def test_the_dropout_key_depends_on_seed_and_step_only():
    from jaxlin.training.trainer import dropout_key, step_key

    keys = [jax.random.key_data(step_key(dropout_key(seed), step)) for seed in (0, 1) for step in (0, 1)]
    assert len({tuple(np.asarray(k).ravel()) for k in keys}) == 4
    np.testing.assert_array_equal(jax.random.key_data(step_key(dropout_key(0), jnp.int32(1))), keys[1])
