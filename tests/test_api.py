"""The public API: `from jaxlin import ...` names what a library user needs, lazily."""

import subprocess
import sys

import pytest

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


def test_the_namespace_holds_the_public_api_and_no_import_helpers():
    import jaxlin.cli.main  # a loaded submodule is an attribute, not part of the listing

    jaxlin.Config  # noqa: B018  (a name looked up once is cached in the module)
    assert dir(jaxlin) == jaxlin.__all__ == sorted(jaxlin._EXPORTS)
    for helper in ("annotations", "importlib"):
        assert not hasattr(jaxlin, helper), helper
    star = {}
    exec("from jaxlin import *", star)
    assert set(star) - {"__builtins__"} == set(jaxlin.__all__)


def test_a_name_that_is_not_public_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        jaxlin.nothing  # noqa: B018


def test_fit_through_the_public_names(tiny_data):
    from jaxlin import Config, fit, get_model

    result = fit(Config(num_steps=20, eval_every=10, batch_size=50), tiny_data, get_model("linear"), progress=False)
    assert [r["step"] for r in result.evaluations] == [0, 10, 20] and result.final["accuracy"] > 0.3


# A tiny `fit` in a fresh process, as a library user writes it; prints the compile cache's directory
# (JAX's setting) and jaxlin's count of its hits and misses.
_FIT = """
import sys
import jax
from jaxlin import Config, fit, get_model, load_datasets
from jaxlin.runtime import compile_cache

data = load_datasets("mnist", sys.argv[1])
fit(Config(num_steps=10, eval_every=10, batch_size=50), data, get_model("linear"), progress=False)
counts = compile_cache.counts()
print(jax.config.jax_compilation_cache_dir, counts["hits"], counts["misses"])
"""


def _fit_in_a_fresh_process(data_dir, cache_dir, **env):
    import os

    environment = {**os.environ, "JAXLIN_CACHE_DIR": str(cache_dir), **env}
    done = subprocess.run([sys.executable, "-c", _FIT, str(data_dir)], capture_output=True, text=True, timeout=300,
                          env=environment)
    assert done.returncode == 0, done.stderr
    where, hits, misses = done.stdout.split()
    return where, int(hits), int(misses)


@pytest.mark.slow
def test_fit_from_python_uses_the_compile_cache_so_a_second_process_hits_it(tiny_data_dir, tmp_path):
    cache = tmp_path / "cache"
    first = _fit_in_a_fresh_process(tiny_data_dir, cache)
    assert first[0] == str(cache / "xla") and first[1] == 0 and first[2] > 0
    second = _fit_in_a_fresh_process(tiny_data_dir, cache)
    assert second[0] == str(cache / "xla") and second[1] > 0 and second[2] == 0


@pytest.mark.slow
def test_the_library_cache_can_be_turned_off_and_a_users_own_jax_cache_stays_theirs(tiny_data_dir, tmp_path):
    off = _fit_in_a_fresh_process(tiny_data_dir, tmp_path / "off", JAXLIN_COMPILE_CACHE="0")
    assert off == ("None", 0, 0) and not (tmp_path / "off" / "xla").exists()
    own = tmp_path / "own"
    theirs = _fit_in_a_fresh_process(tiny_data_dir, tmp_path / "cache", JAX_COMPILATION_CACHE_DIR=str(own))
    assert theirs[0] == str(own) and not (tmp_path / "cache" / "xla").exists()


def test_what_the_docs_and_examples_import_from_jaxlin_is_public_or_a_submodule():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    imported = set()
    for path in [*root.glob("docs/*.md"), *root.glob("examples/*.py"), root / "README.md"]:
        for names in re.findall(r"^\s*from jaxlin import ([\w, ]+)$", path.read_text(), re.MULTILINE):
            imported |= {name.strip() for name in names.split(",")}
    assert {"Config", "Datasets", "fit", "get_model", "load_datasets"} <= imported
    import importlib.util

    submodules = {name for name in imported if importlib.util.find_spec(f"jaxlin.{name}") is not None}
    assert imported - submodules <= set(jaxlin.__all__), sorted(imported - submodules - set(jaxlin.__all__))


@pytest.mark.slow
def test_a_command_run_again_in_one_process_writes_its_own_cache_directory(tmp_path):
    """JAX opens its cache once; jaxlin reopens it when a later command (a notebook's, a test's) names another."""
    script = """
import os, sys
import jax, jax.numpy as jnp
from jaxlin.runtime import compile_cache

for name, scale in (("a", 2.0), ("b", 3.0)):
    os.environ["JAXLIN_CACHE_DIR"] = os.path.join(sys.argv[1], name)
    compile_cache.enable()
    jax.jit(lambda x: x * scale + 1)(jnp.ones(3)).block_until_ready()
"""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert list((tmp_path / "a" / "xla").iterdir()) and list((tmp_path / "b" / "xla").iterdir())
