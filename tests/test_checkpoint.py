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


def test_unreadable_file(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip archive")
    with pytest.raises(CheckpointError, match="not a readable params file"):
        load_params(tmp_path / "junk.npz")


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
    with pytest.raises(CheckpointError, match="no valid model description"):
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
