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
                               ("mymodels:wrong_logits", r"expected \(2, 10\)")]:
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
    command = err.strip().splitlines()[-1].split("Resume with: ")[1]
    resumed = _jaxlin(workdir, *shlex.split(command)[1:], "--num-steps", "60")  # no --model: the record has it
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
