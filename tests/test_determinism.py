"""The same flags give the same bits: nothing a run measures or caches decides what it computes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxlin.runtime import dot_layout as layout
from jaxlin.config import Config
from jaxlin.models import get_model


class _Device:
    def __init__(self, platform: str):
        self.platform = platform


class _Placement:
    def __init__(self, platform: str = "cpu", count: int = 1):
        self.devices = tuple(_Device(platform) for _ in range(count))
        self.mesh = None if count == 1 else object()


@pytest.mark.parametrize("model, loop, placement, expected", [
    ("linear", "fused", _Placement(), "batched"),
    ("mlp", "fused", _Placement(), "plain"),
    ("cnn", "fused", _Placement(), "plain"),
    ("linear", "per-step", _Placement(), "plain"),
    ("linear", "fused", _Placement(count=4), "plain"),
    ("linear", "fused", _Placement("gpu"), "plain"),
    ("linear", "fused", _Placement("tpu"), "plain"),
])
def test_auto_resolves_by_a_fixed_rule(model, loop, placement, expected):
    config = Config(model=model, loop=loop)
    assert layout.choose(config, get_model(model), placement) == expected
    for explicit in ("plain", "batched"):  # --dot-layout overrides the rule
        assert layout.choose(config.replace(dot_layout=explicit), get_model(model), placement) == explicit


def test_the_rule_ignores_the_cache(monkeypatch, tmp_path):
    """A choice once cached (here a damaged one) decides nothing, and nothing is written."""
    monkeypatch.setenv("JAXLIN_CACHE_DIR", str(tmp_path))
    (tmp_path / "dot-layouts.json").write_text('{"not": "a choice"')
    assert layout.choose(Config(), get_model("linear"), _Placement()) == "batched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dot-layouts.json"]


def _train(data_dir: Path, out: Path, cache: Path) -> dict:
    exe = Path(sys.executable).with_name("jaxlin")
    env = {**os.environ, "JAXLIN_CACHE_DIR": str(cache)}
    done = subprocess.run([str(exe), "train", "--data-dir", str(data_dir), "--output-dir", str(out), "--num-steps",
                           "300", "--eval-every", "300", "--no-progress", "--no-figures"],
                          env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    with np.load(out / "params.npz", allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


@pytest.mark.slow
def test_runs_with_fresh_or_damaged_caches_agree_bit_for_bit(mnist_dir, tmp_path):
    """Each run has a cache of its own (as on another machine); one holds a damaged dot-layouts.json,
    the file where jaxlin once cached a measured choice; the last reuses the first's cache (its
    compiled programs)."""
    damaged = tmp_path / "cache-damaged"
    damaged.mkdir()
    (damaged / "dot-layouts.json").write_text("{garbage")
    runs = [_train(mnist_dir, tmp_path / name, tmp_path / f"cache-{name}") for name in ("a", "b")]
    runs.append(_train(mnist_dir, tmp_path / "c", damaged))
    runs.append(_train(mnist_dir, tmp_path / "d", tmp_path / "cache-a"))  # compiled programs loaded from a's cache
    assert not (tmp_path / "cache-a" / "dot-layouts.json").exists()
    assert (damaged / "dot-layouts.json").read_text() == "{garbage"
    for other in runs[1:]:
        assert other.keys() == runs[0].keys()
        for name in runs[0]:
            np.testing.assert_array_equal(other[name], runs[0][name], err_msg=name)
    assert json.loads((tmp_path / "d" / "metrics.json").read_text())["timings"]["breakdown"]["compile_cache"]["hits"]
    config = json.loads((tmp_path / "a" / "metrics.json").read_text())["config"]
    assert config["dot_layout"] == "batched"  # "auto", resolved and recorded
