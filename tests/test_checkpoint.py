"""Saving and loading params, and every way a params file can be wrong."""

import json

import jax
import numpy as np
import pytest

from jaxlin.checkpoint import MODEL_KEY, CheckpointError, load_params, save_params
from jaxlin.models import get_model


def _save_mlp(path):
    model = get_model("mlp", hidden_sizes=(8,), activation="tanh")
    params = model.init(jax.random.key(0))
    save_params(path, params, model)
    return params, model


def test_roundtrip_restores_params_and_model(tmp_path):
    params, model = _save_mlp(tmp_path / "p.npz")
    loaded, loaded_model = load_params(tmp_path / "p.npz")
    assert loaded_model.describe() == model.describe() == "mlp 784-8-10 (tanh)"
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    with np.load(tmp_path / "p.npz", allow_pickle=False) as archive:  # plain arrays, no pickle
        assert json.loads(str(archive[MODEL_KEY]))["name"] == "mlp"


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such params file"):
        load_params(tmp_path / "nope.npz")


def test_files_that_are_not_params(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip archive")
    (tmp_path / "metrics.json").write_text('{"final_test_accuracy": 0.9}')
    for name in ("junk.npz", "metrics.json"):
        with pytest.raises(CheckpointError, match=r"not a params file \(an .npz written by `jaxlin train`\)") as info:
            load_params(tmp_path / name)
        assert "pickle" not in str(info.value)
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 and then nothing")
    with pytest.raises(CheckpointError, match="not a readable params file"):
        load_params(tmp_path / "broken.npz")


def _described(path, spec, arrays):
    np.savez(path, **arrays, __model__=np.array(json.dumps(spec)))
    return path


@pytest.mark.parametrize("spec, message", [
    ({"name": "linear", "layer_sizes": [100, 10], "activation": "none"},
     "the params take inputs of 100 values; these images have 784"),
    ({"name": "linear", "layer_sizes": [784, 20], "activation": "none"},
     "the params predict 20 classes; this data set has 10"),
    ({"name": "mlp", "layer_sizes": [], "activation": "relu"}, "has no valid layer sizes"),
    ({"name": "mlp", "layer_sizes": [784, 0, 10], "activation": "relu"}, "has no valid layer sizes"),
    ({"name": "linear", "layer_sizes": [784, 5, 10], "activation": "none"}, "a linear model has no hidden layers"),
    ({"name": "resnet", "layer_sizes": [784, 10]}, "unknown model 'resnet'"),
    (["not", "an", "object"], "not an object with a name"),
])
def test_descriptions_that_do_not_fit_mnist(tmp_path, spec, message):
    sizes = spec.get("layer_sizes") if isinstance(spec, dict) else None
    arrays = ({"layers/0/w": np.zeros((sizes[0], sizes[-1]), np.float32),
               "layers/0/b": np.zeros(sizes[-1], np.float32)} if sizes and min(sizes) > 0 else {})
    with pytest.raises(CheckpointError, match=message):
        load_params(_described(tmp_path / "p.npz", spec, arrays))


def test_any_params_pytree_round_trips(tmp_path):
    model = get_model("cnn")
    params = model.init(jax.random.key(1))
    save_params(tmp_path / "cnn.npz", params, model)
    with np.load(tmp_path / "cnn.npz") as archive:
        assert "layers/conv1/w" in archive.files and "layers/out/b" in archive.files
    loaded, loaded_model = load_params(tmp_path / "cnn.npz")
    assert loaded_model.describe() == "cnn 784-conv32-conv64-256-10"
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(params))


def test_file_for_another_model(tmp_path):
    _save_mlp(tmp_path / "p.npz")
    with pytest.raises(CheckpointError, match=r"params are for model mlp 784-8-10 \(tanh\), not linear 784-10"):
        load_params(tmp_path / "p.npz", get_model("linear"))


def test_wrong_shapes(tmp_path):
    model = get_model("linear")
    save_params(tmp_path / "p.npz", [{"w": np.zeros((784, 9), np.float32), "b": np.zeros(10, np.float32)}], model)
    with pytest.raises(CheckpointError, match=r"layers/0/w is float32\[784, 9\], expected float32\[784, 10\]"):
        load_params(tmp_path / "p.npz")


def test_missing_arrays_and_description(tmp_path):
    np.savez(tmp_path / "bare.npz", w=np.zeros((784, 10), np.float32))
    with pytest.raises(CheckpointError, match="no model description in the params file"):
        load_params(tmp_path / "bare.npz")
    model = get_model("mlp", hidden_sizes=(8,))
    save_params(tmp_path / "short.npz", model.init(jax.random.key(0))[:1], model)
    with pytest.raises(CheckpointError, match="expected arrays"):
        load_params(tmp_path / "short.npz")


def test_non_finite_values(tmp_path):
    model = get_model("linear")
    save_params(tmp_path / "p.npz", [{"w": np.full((784, 10), np.nan, np.float32),
                                      "b": np.zeros(10, np.float32)}], model)
    with pytest.raises(CheckpointError, match="non-finite"):
        load_params(tmp_path / "p.npz")


def test_a_failed_save_leaves_nothing(tmp_path):
    model = get_model("linear")
    with pytest.raises(TypeError):
        save_params(tmp_path / "p.npz", [{"w": object(), "b": np.zeros(10)}], model)
    assert list(tmp_path.iterdir()) == []
