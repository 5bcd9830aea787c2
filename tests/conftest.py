"""Shared fixtures: small synthetic IDX data sets, and the real MNIST files when configured.

Tests that need the real data read the directory named by JAXLIN_DATA_DIR. When
that setting is given, missing files are a failure, not a skip: a CI run that
lost its data must not pass quietly.
"""

import os
from pathlib import Path

import pytest

# The data-writing helpers live in helpers.py; their names stay importable from here for tests that
# still import them from conftest (import them from helpers).
from helpers import idx_bytes, synthetic_split, write_dataset, write_idx  # noqa: F401
from jaxlin.data.datasets import DATA_DIR_ENV, IDX_FILES
from jaxlin.data.download import CACHE_ENV, MIRRORS_ENV

# Port 9 (discard) on the loopback: nothing listens, so a connection is refused at once.
CLOSED_LOOPBACK_MIRROR = "http://127.0.0.1:9/"


@pytest.fixture(autouse=True)
def no_public_mirrors(monkeypatch, tmp_path_factory):
    """No test may reach the built-in public mirrors, nor read or fill the user's cache: every test
    sees a closed loopback mirror and an empty cache of its own unless it sets others."""
    monkeypatch.setenv(MIRRORS_ENV, CLOSED_LOOPBACK_MIRROR)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(autouse=True)
def figure_errors_raise(monkeypatch):
    """A run turns a failure to draw its figures into a note; in the tests it raises, so that a bug in the
    figures fails them rather than hiding behind a note (see `outputs.write_figures`)."""
    monkeypatch.setenv("JAXLIN_FIGURE_ERRORS_RAISE", "1")


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory) -> Path:
    """5,600 training images (600 after the 5,000 validation images), 1,003 test images."""
    return write_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_data(tiny_data_dir):
    from jaxlin.data.datasets import load_idx_dir

    return load_idx_dir(tiny_data_dir)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    setting = os.environ.get(DATA_DIR_ENV)
    if not setting:
        pytest.skip(f"{DATA_DIR_ENV} is not set: tests on the real MNIST files are skipped")
    directory = Path(setting)
    missing = [n for n in IDX_FILES.values()
               if not (directory / (n + ".gz")).is_file() and not (directory / n).is_file()]
    if missing:
        pytest.fail(f"{DATA_DIR_ENV}={setting} is set but lacks {', '.join(missing)}")
    return directory


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    from jaxlin.data.datasets import load_idx_dir

    return load_idx_dir(mnist_dir)
