"""Data parallel over simulated CPU devices: real processes with JAX_NUM_CPU_DEVICES=4."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxlin.cli import main

pytestmark = pytest.mark.slow


def _jaxlin(*args, devices: int = 4, cwd=None):
    """`jaxlin` in a process that sees `devices` CPU devices (set before JAX starts)."""
    exe = Path(sys.executable).with_name("jaxlin")
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices)}
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=600, check=False,
                          cwd=cwd)


def _params(out: Path) -> dict:
    with np.load(out / "params.npz", allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files if name != "__model__"}


@pytest.fixture(scope="module")
def single_device_run(mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("one") / "run"
    assert main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(out), "--no-progress"]) == 0
    return out


def test_four_devices_match_one_and_repeat_bit_for_bit(mnist_dir, single_device_run, tmp_path):
    runs = []
    for name in ("a", "b"):
        done = _jaxlin("train", "--devices", "4", "--data-dir", str(mnist_dir), "--output-dir", str(tmp_path / name),
                       "--no-progress")
        assert done.returncode == 0, done.stderr
        assert "device 4 cpu devices (data parallel)" in done.stdout
        runs.append(tmp_path / name)
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert 0.910 <= metrics["final_test_accuracy"] <= 0.925
    one, four, again = _params(single_device_run), _params(runs[0]), _params(runs[1])
    for name in one:
        scale = np.abs(one[name]).max()
        assert np.abs(four[name] - one[name]).max() <= 1e-5 * scale, name  # reductions differ in order
        np.testing.assert_array_equal(four[name], again[name])  # same devices, same bits


def test_the_per_step_loop_and_a_resume_on_more_devices(mnist_dir, single_device_run, tmp_path):
    out = tmp_path / "run"
    common = ["--data-dir", str(mnist_dir), "--output-dir", str(out), "--no-progress", "--num-steps", "40",
              "--eval-every", "20"]
    assert main(["train", *common]) == 0  # one device, with checkpoints
    resumed = _jaxlin("train", "--resume", "--devices", "all", *common[:4], "--num-steps", "80", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming" in resumed.stdout and "4 cpu devices" in resumed.stdout
    per_step = _jaxlin("train", "--devices", "2", "--loop", "per-step", *common[:2], "--output-dir",
                       str(tmp_path / "per-step"), "--num-steps", "40", "--eval-every", "20", "--no-progress")
    assert per_step.returncode == 0, per_step.stderr
    assert set(_params(tmp_path / "per-step")) == {"layers/0/w", "layers/0/b"}


@pytest.mark.parametrize("args, message", [
    (["--devices", "3"], "batch size 100 does not divide by 3 devices; the nearest that do: 99 or 102"),
    (["--devices", "8"], "--devices 8: JAX sees only 4 cpu devices here"),
    (["--devices", "two"], "devices must be a number >= 1 or all, got 'two'"),
])
def test_device_counts_that_cannot_run(mnist_dir, tmp_path, args, message):
    done = _jaxlin("train", *args, "--data-dir", str(mnist_dir), "--output-dir", str(tmp_path / "out"))
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
