"""The public API: `from jaxlin import ...` names what a library user needs, lazily."""

import subprocess
import sys

import jaxlin


def test_importing_jaxlin_imports_no_jax():
    script = "import sys, jaxlin; print('jax' in sys.modules, 'matplotlib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == ["False", "False"]


def test_every_public_name_resolves_to_the_object_of_its_module():
    import importlib

    for name in jaxlin.__all__:
        module = importlib.import_module(jaxlin._EXPORTS[name])
        assert getattr(jaxlin, name) is getattr(module, name), name
    assert set(jaxlin.__all__) <= set(dir(jaxlin))


def test_a_name_that_is_not_public_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        jaxlin.nothing  # noqa: B018


def test_fit_through_the_public_names(tiny_data):
    from jaxlin import Config, fit, get_model

    result = fit(Config(num_steps=20, eval_every=10, batch_size=50), tiny_data, get_model("linear"), progress=False)
    assert [r["step"] for r in result.evaluations] == [0, 10, 20] and result.final["accuracy"] > 0.3
