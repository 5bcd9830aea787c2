"""A user's own model by reference (`--model MODULE:NAME`): trained, stopped, resumed with the printed
command, evaluated and used to predict, with nothing but the module in the working directory."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

JAXLIN = Path(sys.executable).with_name("jaxlin")

MODULE = '''
import jax
import jax.numpy as jnp


class TinyMLP:
    """A plain-JAX MLP with its own parameter layout, built for the data's shape."""

    def __init__(self, image_shape, num_classes):
        self.inputs = image_shape[0] * image_shape[1] * image_shape[2]
        self.num_classes = num_classes

    def init(self, key):
        k1, k2 = jax.random.split(key)
        return {"hidden": {"w": jax.random.normal(k1, (self.inputs, 16)) * 0.05, "b": jnp.zeros(16)},
                "out": {"w": jax.random.normal(k2, (16, self.num_classes)) * 0.05, "b": jnp.zeros(self.num_classes)}}

    def apply(self, params, images):
        hidden = jax.nn.relu(images @ params["hidden"]["w"] + params["hidden"]["b"])
        return hidden @ params["out"]["w"] + params["out"]["b"]


class _Dense:
    def init(self, key):
        return [{"w": jnp.zeros((784, 10)), "b": jnp.zeros(10)}]

    def apply(self, params, images):
        return images @ params[0]["w"] + params[0]["b"]


dense = _Dense()  # an object with init and apply: used as it is
NOT_A_MODEL = 3


no_params = type("NoParams", (), {"init": lambda self, key: {},
                                   "apply": lambda self, params, images: jnp.zeros((images.shape[0], 10))})()


def wrong_logits(image_shape, num_classes):
    return type("Wrong", (), {"init": lambda self, key: {"w": jnp.zeros((784, 3))},
                              "apply": lambda self, params, images: images @ params["w"]})()
'''


@pytest.fixture
def workdir(tmp_path, tiny_data_dir, monkeypatch):
    (tmp_path / "mymodels.py").write_text(MODULE)
    monkeypatch.setenv("JAXLIN_DATA_DIR", str(tiny_data_dir))
    return tmp_path


def _jaxlin(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(JAXLIN), *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


def test_models_by_reference_and_what_is_refused(workdir, monkeypatch):
    from jaxlin.models import ModelError, get_model, model_from_spec

    monkeypatch.chdir(workdir)
    model = get_model("mymodels:TinyMLP")
    assert model.spec == {"name": "mymodels:TinyMLP", "layer_sizes": [784, 10], "activation": "none"}
    assert model_from_spec(model.spec).name == "mymodels:TinyMLP" and not model.first_layer_dense
    dense = get_model("mymodels:dense")  # jaxlin's dense layout: its weights figure and layout rules apply
    assert dense.first_layer_dense and dense.is_single_dense_layer
    for reference, message in [("mymodels:NOT_A_MODEL", "not a model"), ("mymodels:nothing", "has no nothing"),
                               ("nosuchmodule:X", "cannot import nosuchmodule"),
                               ("mymodels:wrong_logits", r"expected \(2, 10\)"),
                               ("mymodels:no_params", "its init returns no floating-point arrays: nothing to train")]:
        with pytest.raises(ModelError, match=message):
            get_model(reference)
    with pytest.raises(ModelError, match="these images and classes make"):
        model_from_spec({**model.spec, "layer_sizes": [784, 26]})


@pytest.mark.slow
def test_a_user_model_trains_stops_resumes_evaluates_and_predicts(workdir):
    out = workdir / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = subprocess.Popen([str(JAXLIN), "train", "--model", "mymodels:TinyMLP", "--optimizer", "adam",
                            "--learning-rate", "0.001", "--num-steps", "20000", "--eval-every", "10",
                            "--output-dir", str(out), "--no-progress", "--no-figures"], cwd=workdir, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records = out / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (records.exists() and len(records.read_text().splitlines()) >= 3):
        assert time.monotonic() < deadline and run.poll() is None, run.communicate()
        time.sleep(0.05)
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 143, err
    line = err.strip().splitlines()[-1]
    command, stopped_at = line.split("Resume with: ")[1], int(line.split(" at step ")[1].split()[0])
    # No --model: the record has it.
    resumed = _jaxlin(workdir, *shlex.split(command)[1:], "--num-steps", str(stopped_at + 20))
    assert resumed.returncode == 0, resumed.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"].startswith("mymodels:TinyMLP") and metrics["config"]["model"] == "mymodels:TinyMLP"
    evaluated = _jaxlin(workdir, "evaluate", str(out / "params.npz"), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["test_accuracy"] == metrics["final_test_accuracy"]
    from PIL import Image

    from jaxlin.data.datasets import load_idx_dir

    test = load_idx_dir(Path(os.environ["JAXLIN_DATA_DIR"])).test
    Image.fromarray(test.images_uint8[0].reshape(28, 28)).save(workdir / "digit.png")
    predicted = _jaxlin(workdir, "predict", str(out / "params.npz"), str(workdir / "digit.png"), "--json")
    assert predicted.returncode == 0, predicted.stderr
    assert np.isclose(sum(json.loads(predicted.stdout)[0]["probabilities"]), 1.0, atol=1e-4)
    elsewhere = _jaxlin(workdir.parent, "evaluate", str(out / "params.npz"))  # the module is not importable there
    assert elsewhere.returncode == 2 and elsewhere.stderr.count("\n") == 1
    assert "cannot import mymodels" in elsewhere.stderr and "PYTHONPATH" in elsewhere.stderr


@pytest.mark.slow
def test_a_sweep_of_a_user_model(workdir):
    done = _jaxlin(workdir, "sweep", "--model", "mymodels:TinyMLP", "--learning-rates", "0.05,0.2",
                   "--num-steps", "30", "--eval-every", "10", "--output-dir", "s", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert json.loads((workdir / "s" / "sweep.json").read_text())["model"].startswith("mymodels:TinyMLP")
    assert (workdir / "s" / "best" / "params.npz").is_file()


CHECKED = '''
import jax
import jax.numpy as jnp


class Permuted:
    """A linear model whose params hold integer leaves: a permutation of the inputs and a counter."""

    def __init__(self, image_shape, num_classes):
        self.inputs, self.num_classes = image_shape[0] * image_shape[1] * image_shape[2], num_classes

    def init(self, key):
        return {"perm": jnp.arange(self.inputs, dtype=jnp.int32)[::-1], "count": jnp.array(30, jnp.int32),
                "w": jnp.zeros((self.inputs, self.num_classes)), "b": jnp.zeros(self.num_classes)}

    def apply(self, params, images):
        return images[:, params["perm"]] @ params["w"] + params["b"]


class PermutedWithTrainApply(Permuted):
    def train_apply(self, params, images, key):
        return self.apply(params, images), params


class PairLogits(Permuted):
    def apply(self, params, images):
        return super().apply(params, images), 1


class IntegerLogits(Permuted):
    def apply(self, params, images):
        return super().apply(params, images).astype(jnp.int32)


class TrainApplyNotAPair(Permuted):
    def train_apply(self, params, images, key):
        return self.apply(params, images)


class TrainApplyIntegerLogits(Permuted):
    def train_apply(self, params, images, key):
        return self.apply(params, images).astype(jnp.int32), params


class TrainApplyOtherDtypes(Permuted):
    def train_apply(self, params, images, key):
        return self.apply(params, images), {**params, "count": params["count"].astype(jnp.float32)}
'''


@pytest.fixture
def checked(tmp_path, tiny_data_dir, monkeypatch):
    (tmp_path / "checkedmodels.py").write_text(CHECKED)
    monkeypatch.setenv("JAXLIN_DATA_DIR", str(tiny_data_dir))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", ["Permuted", "PermutedWithTrainApply"])
def test_integer_leaves_stay_integers_out_of_the_gradients_and_in_params_npz(checked, capsys, name):
    from jaxlin.cli.main import main
    from jaxlin.runs.params_file import load_params

    out = checked / "run"
    assert main(["train", "--model", f"checkedmodels:{name}", "--num-steps", "4", "--batch-size", "50",
                 "--eval-every", "2", "--output-dir", str(out), "--no-progress", "--no-figures"]) == 0
    stored = np.load(out / "params.npz")
    assert stored["layers/perm"].dtype == np.int32 and stored["layers/count"].dtype == np.int32
    np.testing.assert_array_equal(stored["layers/perm"], np.arange(784)[::-1])  # untouched by the optimizer
    assert stored["layers/count"] == 30 and np.abs(stored["layers/w"]).sum() > 0  # w trained
    params, _ = load_params(out / "params.npz")
    assert params["perm"].dtype == np.int32 and int(params["count"]) == 30
    capsys.readouterr()
    assert main(["evaluate", str(out / "params.npz"), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["test_accuracy"] == json.loads((out / "metrics.json").read_text())["final_test_accuracy"]


def test_a_params_file_must_hold_the_dtypes_the_model_has(checked):
    from jaxlin.models import get_model
    from jaxlin.runs.params_file import CheckpointError, load_params, save_params

    model = get_model("checkedmodels:Permuted")
    params = model.init(jax.random.key(0))
    save_params(checked / "p.npz", {**params, "perm": params["perm"].astype(np.float32)}, model)
    with pytest.raises(CheckpointError, match=r"layers/perm is float32\[784\], expected int32\[784\]"):
        load_params(checked / "p.npz")


def test_a_python_model_with_integer_leaves_trains_through_fit(checked, tiny_data):
    from jaxlin import Config, fit
    from jaxlin.models import get_model

    built = get_model("checkedmodels:Permuted")
    model = built._replace(train_apply=None)  # as a user might build a Model by hand: no training mode
    result = fit(Config(num_steps=3, batch_size=50, eval_every=3), tiny_data, model, progress=False)
    assert result.params["perm"].dtype == np.int32 and int(result.params["count"]) == 30


@pytest.mark.parametrize("name, message", [
    ("PairLogits", r"apply returns a tuple of 2 for 2 images; expected \(2, 10\) logits: one floating-point array"),
    ("IntegerLogits", r"apply returns int32\[2, 10\] for 2 images; expected \(2, 10\) logits"),
    ("TrainApplyNotAPair", r"train_apply returns float32\[2, 10\]; expected a pair \(logits, params\)"),
    ("TrainApplyIntegerLogits", r"train_apply returns int32\[2, 10\] for 2 images"),
    ("TrainApplyOtherDtypes", "train_apply must return .* params of the structure, shapes and dtypes init returns"),
])
def test_a_model_whose_outputs_are_not_logits_is_refused_before_anything_is_written(checked, capsys, name, message):
    from jaxlin.cli.main import main
    from jaxlin.models import ModelError, get_model

    with pytest.raises(ModelError, match=f"^--model checkedmodels:{name}: {message}"):
        get_model(f"checkedmodels:{name}")
    out = checked / "run"
    assert main(["train", "--model", f"checkedmodels:{name}", "--num-steps", "2", "--output-dir", str(out),
                 "--no-progress", "--no-figures"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and not out.exists()


def test_fit_checks_the_model_against_the_data(checked, tiny_data):
    from jaxlin import Config, fit
    from jaxlin.models import Model, ModelError, get_model

    config = Config(num_steps=2, batch_size=50, eval_every=2)
    with pytest.raises(ModelError, match=r"^the model linear takes 784 inputs and predicts 20 classes; this data "
                                         r"has 784 inputs and 10 classes \(build it with get_model\('linear', ..., "
                                         r"image_shape=data.image_shape, num_classes=data.num_classes\)\)$"):
        fit(config, tiny_data, get_model("linear", num_classes=20), progress=False)
    with pytest.raises(ModelError, match="^the model checkedmodels:Permuted takes 256 inputs and predicts 10 "
                                         "classes; this data has 784 inputs"):
        fit(config, tiny_data, get_model("checkedmodels:Permuted", image_shape=(16, 16, 1)), progress=False)
    linear = get_model("linear")
    broken = Model("mine", (784, 10), "none", init=linear.init, apply=lambda params, images: images @ params,
                   architecture="?", activation_widths=(10,), first_layer_dense=False, init_uses_key=False)
    with pytest.raises(ModelError, match="^the model mine: its init and apply do not run on this data's images "
                                         "of 784 values: TypeError"):
        fit(config, tiny_data, broken, progress=False)


def test_import_errors_say_whether_the_module_or_what_it_imports_is_missing(checked):
    from jaxlin.models import ModelError, get_model, model_from_spec

    (checked / "depmod.py").write_text("import haiku_not_installed_anywhere\n")
    with pytest.raises(ModelError, match=r"^--model depmod:X: importing depmod failed: ModuleNotFoundError: "
                                         r"No module named 'haiku_not_installed_anywhere'$"):
        get_model("depmod:X")
    with pytest.raises(ModelError, match="^--model nosuchmodule:X: cannot import nosuchmodule"):
        get_model("nosuchmodule:X")
    # A params file's model was named by the file, not by a --model the user gave.
    with pytest.raises(ModelError, match="^the params' model nosuchmodule:X: cannot import nosuchmodule"):
        model_from_spec({"name": "nosuchmodule:X", "layer_sizes": [784, 10], "activation": "none"})


def test_resuming_after_the_models_module_changed_says_what_differs(workdir, monkeypatch, capsys):
    """The record names mymodels:TinyMLP; its module now builds 17 hidden units instead of 16."""
    import sys

    from jaxlin.cli.main import main

    monkeypatch.chdir(workdir)
    monkeypatch.syspath_prepend(str(workdir))
    out = workdir / "run"
    args = ["--output-dir", str(out), "--no-progress", "--no-figures", "--batch-size", "50", "--eval-every", "2"]
    assert main(["train", "--model", "mymodels:TinyMLP", "--num-steps", "2", *args]) == 0
    (workdir / "mymodels.py").write_text(MODULE.replace("16", "17"))
    monkeypatch.delitem(sys.modules, "mymodels")
    capsys.readouterr()
    assert main(["train", "--resume", "--num-steps", "4", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "float32(16,), the build makes float32(17,)" in err and "whose module has changed since" in err
