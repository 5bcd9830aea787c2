"""The functional models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlin.models import ModelError, get_model


def test_linear_is_the_tutorial_model():
    model = get_model("linear")
    params = model.init(jax.random.key(0))
    assert len(params) == 1
    assert params[0]["w"].shape == (784, 10) and params[0]["b"].shape == (10,)
    assert not np.any(params[0]["w"]) and not np.any(params[0]["b"])  # zeros, as in the tutorial
    rng = np.random.default_rng(0)
    w, b, x = (rng.normal(size=s).astype(np.float32) for s in ((784, 10), (10,), (3, 784)))
    np.testing.assert_allclose(model.apply([{"w": w, "b": b}], x), x @ w + b, rtol=1e-5, atol=1e-5)


def test_mlp_layers_and_random_init():
    model = get_model("mlp", hidden_sizes=(32, 16), activation="tanh")
    assert model.layer_sizes == (784, 32, 16, 10)
    params = model.init(jax.random.key(0))
    assert [p["w"].shape for p in params] == [(784, 32), (32, 16), (16, 10)]
    assert np.std(params[0]["w"]) > 0.01  # hidden units must start different
    logits = model.apply(params, jnp.ones((5, 784)))
    assert logits.shape == (5, 10)
    x = np.ones((1, 784), np.float32)
    expected = np.tanh(np.tanh(x @ params[0]["w"] + params[0]["b"]) @ params[1]["w"] + params[1]["b"])
    expected = expected @ params[2]["w"] + params[2]["b"]
    np.testing.assert_allclose(model.apply(params, x), expected, rtol=1e-4, atol=1e-5)


def test_mlp_init_depends_on_key():
    model = get_model("mlp", hidden_sizes=(8,))
    a, b = model.init(jax.random.key(0)), model.init(jax.random.key(1))
    assert not np.array_equal(a[0]["w"], b[0]["w"])


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "resnet"}, "unknown model 'resnet'"),
    ({"name": "cnn", "input_size": 100}, "the cnn needs square images with a side divisible by 4"),
    ({"name": "mlp", "activation": "swishy"}, "unknown activation 'swishy'"),
    ({"name": "mlp", "hidden_sizes": (16, 0)}, r"layer sizes must be at least 1, got \[784, 16, 0, 10\]"),
    ({"name": "mlp", "hidden_sizes": ()}, "at least one hidden layer"),
])
def test_bad_model_settings(kwargs, message):
    with pytest.raises(ModelError, match=message):
        get_model(**kwargs)


def test_config_offers_the_activations_defined_here():
    from jaxlin.config import ACTIVATIONS as NAMES
    from jaxlin.models import ACTIVATIONS

    assert tuple(ACTIVATIONS) == NAMES


def test_the_cnn_maps_images_to_logits_and_has_no_dense_first_layer():
    model = get_model("cnn")
    params = model.init(jax.random.key(0))
    assert params["conv1"]["w"].shape == (3, 3, 1, 32) and params["conv2"]["w"].shape == (3, 3, 32, 64)
    assert params["dense"]["w"].shape == (7 * 7 * 64, 256) and params["out"]["w"].shape == (256, 10)
    images = np.random.default_rng(0).random((3, 784)).astype(np.float32)
    logits = model.apply(params, images)
    assert logits.shape == (3, 10) and np.all(np.isfinite(logits))
    assert model.first_dense_weights(params) is None
    linear = get_model("linear")
    weights, titles = linear.first_dense_weights(linear.init(jax.random.key(0)))
    assert weights.shape == (784, 10) and titles[3] == "Weights: 3"


@pytest.mark.parametrize("spec, message", [
    ({"name": "mlp", "layer_sizes": [784, 8, 10], "activation": ["x"]}, "activation is not a name"),
    ({"name": "mlp", "layer_sizes": [784, 8, 10], "activation": 3}, "activation is not a name"),
    ({"name": ["mlp"], "layer_sizes": [784, 10]}, "not an object with a name"),
    ({"name": "linear", "layer_sizes": [784, 10], "dropout": 0.5}, "unknown fields"),
    ({"name": "linear", "layer_sizes": [784.0, 10]}, "no valid layer sizes"),
    ({"name": "mlp", "layer_sizes": [784, 1 << 30, 10]}, "more than any model here"),
    ({"name": "mlp", "layer_sizes": [784, 8, 10], "activation": "swishy"}, "unknown activation 'swishy'"),
])
def test_model_from_spec_checks_every_field_type(spec, message):
    from jaxlin.models import model_from_spec

    with pytest.raises(ModelError, match=message):
        model_from_spec(spec)


def test_model_from_spec_round_trips_every_model():
    from jaxlin.models import model_from_spec

    for model in (get_model("linear"), get_model("mlp", (16, 8), "gelu"), get_model("cnn")):
        assert model_from_spec(model.spec).spec == model.spec


def test_models_say_what_their_layers_are_as_data():
    """Code outside models.py reads these fields instead of asking which model it has."""
    linear, mlp, cnn = get_model("linear"), get_model("mlp", (16, 8), "gelu"), get_model("cnn")
    assert linear.activation_widths == (10,) and mlp.activation_widths == (16, 8, 10)
    assert cnn.activation_widths == (28 * 28 * 32, 14 * 14 * 64, 256, 10)
    assert [m.first_layer_dense for m in (linear, mlp, cnn)] == [True, True, False]
    assert [m.is_single_dense_layer for m in (linear, mlp, cnn)] == [True, False, False]
    assert [m.init_uses_key for m in (linear, mlp, cnn)] == [False, True, True]
    assert [m.describe() for m in (linear, mlp, cnn)] == [
        "linear 784-10", "mlp 784-16-8-10 (gelu)", "cnn 784-conv32-conv64-256-10"]
    # A model renamed by a user keeps its layers: nothing is keyed on the name.
    renamed = mlp._replace(name="mine")
    assert renamed.describe() == "mine 784-16-8-10 (gelu)"
    weights, titles = renamed.first_dense_weights(renamed.init(jax.random.key(0)))
    assert weights.shape == (784, 16) and titles[0] == "Hidden unit 0"


def test_user_errors_share_one_base_and_stay_value_errors():
    from jaxlin.config import ConfigError
    from jaxlin.data.datasets import DataError
    from jaxlin.data.download import DownloadError
    from jaxlin.errors import JaxlinError

    for error in (ConfigError, DataError, DownloadError, ModelError):
        assert issubclass(error, JaxlinError) and issubclass(error, ValueError)
        assert error("x").exit_code == 2


@pytest.mark.parametrize("lower, higher", [("jaxlin.optimizers", "jaxlin.config"),
                                           ("jaxlin.data.download", "jaxlin.data.datasets")])
def test_lower_modules_do_not_import_the_ones_above_them(lower, higher):
    import subprocess
    import sys

    code = f"import sys, {lower}; print({higher!r} in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "False"


def test_config_reads_the_optimizer_registry_when_it_validates(monkeypatch):
    """A name added to the registry after import is accepted by validation (the flag has no fixed
    choices: it also takes MODULE:NAME); an unknown one is refused naming the choices."""
    from jaxlin import optimizers
    from jaxlin.config import Config, ConfigError

    with pytest.raises(ConfigError, match="unknown optimizer 'lamb'; choose one of sgd, momentum, adam"):
        Config(optimizer="lamb").validate()
    monkeypatch.setitem(optimizers.REGISTRY, "lamb", optimizers.REGISTRY["sgd"])
    assert Config(optimizer="lamb").validate().optimizer == "lamb"


@pytest.mark.parametrize("text, expected", [("256", (256,)), ("32, 16,", (32, 16))])
def test_parse_hidden_sizes(text, expected):
    from jaxlin.config import parse_hidden_sizes

    assert parse_hidden_sizes(text) == expected


@pytest.mark.parametrize("text, message", [("abc", "expected comma-separated integers, got 'abc'"),
                                           ("256,0", "hidden sizes must be integers >= 1, got '256,0'"),
                                           ("", "hidden sizes must be integers >= 1")])
def test_parse_hidden_sizes_names_bad_text(text, message):
    from jaxlin.config import parse_hidden_sizes

    with pytest.raises(ValueError, match=message):
        parse_hidden_sizes(text)
