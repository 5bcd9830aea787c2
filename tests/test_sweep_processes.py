"""`jaxlin sweep` across several processes: the session `jaxlin train` has, so the same guarantees.

Real processes on loopback, 2 simulated CPU devices each, one shared output directory.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

JAXLIN = Path(sys.executable).with_name("jaxlin")
GRID = ["--learning-rates", "0.05,0.2,0.5,1.0"]  # four members: one per device of the two processes


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_pair(*args: str) -> list[subprocess.Popen]:
    """`jaxlin sweep ARGS` as processes 0 and 1 of one run, 2 CPU devices each."""
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2", "PYTHONUNBUFFERED": "1"}
    common = ["sweep", *args, "--devices", "all", "--no-progress", "--coordinator", f"127.0.0.1:{_free_port()}",
              "--num-processes", "2", "--distributed-timeout", "60"]
    return [subprocess.Popen([str(JAXLIN), *common, "--process-id", str(i)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for i in range(2)]


def _finish(processes: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    results = []
    for process in processes:
        out, err = process.communicate(timeout=600)
        results.append((process.returncode, out, err))
    return results


def _best(out: Path) -> tuple[int, dict]:
    summary = json.loads((out / "sweep.json").read_text())
    with np.load(out / "best" / "params.npz", allow_pickle=False) as archive:
        params = {name: archive[name] for name in archive.files if not name.startswith("__")}
    return summary["best"], params


def test_two_processes_pick_the_same_best_member_as_one(tiny_data_dir, tmp_path):
    common = ["--data-dir", str(tiny_data_dir), "--num-steps", "60", "--eval-every", "20", *GRID]
    one = tmp_path / "one"
    done = subprocess.run([str(JAXLIN), "sweep", *common, "--output-dir", str(one), "--no-progress"],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    two = tmp_path / "two"
    results = _finish(_start_pair(*common, "--output-dir", str(two)))
    assert [r[0] for r in results] == [0, 0], results
    assert "4 cpu devices (members sharded)" in results[0][1] and "Best member" in results[0][1]
    assert "Best member" not in results[1][1] and "Wrote" not in results[1][1]  # process 1 reports nothing
    assert "[Gloo]" not in results[0][1] + results[1][1]
    best_one, params_one = _best(one)
    best_two, params_two = _best(two)
    assert best_one == best_two
    for name, expected in params_one.items():
        assert np.abs(params_two[name] - expected).max() <= 1e-5 * max(1.0, np.abs(expected).max()), name
    steps = [json.loads(line)["step"] for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 20, 40, 60]  # one writer: no line twice


def test_sigterm_to_one_process_stops_both_with_a_checkpoint_and_resume_is_bit_identical(tiny_data_dir, tmp_path):
    common = ["--data-dir", str(tiny_data_dir), "--num-steps", "1000", "--eval-every", "10", *GRID]
    whole = tmp_path / "whole"
    assert [r[0] for r in _finish(_start_pair(*common, "--output-dir", str(whole)))] == [0, 0]

    out = tmp_path / "stopped"
    processes = _start_pair(*common, "--output-dir", str(out))
    records = out / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (records.exists() and len(records.read_text().splitlines()) >= 3):
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes), _finish(processes)
        time.sleep(0.05)
    processes[1].send_signal(signal.SIGTERM)  # as when a scheduler pre-empts one host first
    results = _finish(processes)
    assert [r[0] for r in results] == [143, 143], results
    lines = [err.strip().splitlines()[-1] for _, _, err in results]
    assert lines[0] == lines[1] and lines[0].startswith("jaxlin: stopped by SIGTERM at step "), lines
    assert "jaxlin sweep --resume" in lines[0]
    step = int(lines[0].split(" at step ")[1].split()[0])
    assert 0 < step < 1000 and (out / "checkpoints" / str(step)).is_dir()

    resumed = _finish(_start_pair("--resume", "--output-dir", str(out)))
    assert [r[0] for r in resumed] == [0, 0], resumed
    assert f"Resuming {out} from step {step}" in resumed[0][1]
    best_whole, params_whole = _best(whole)
    best, params = _best(out)
    assert best == best_whole
    for name, expected in params_whole.items():
        np.testing.assert_array_equal(params[name], expected, err_msg=name)
    # The same records, but for their wall times.
    accuracies = [[r["step"], r["validation_accuracy"], r["train_loss"]]
                  for r in json.loads((out / "sweep.json").read_text())["evaluations"]]
    expected = [[r["step"], r["validation_accuracy"], r["train_loss"]]
                for r in json.loads((whole / "sweep.json").read_text())["evaluations"]]
    assert accuracies == expected


def test_processes_given_different_sweep_values_refuse_at_once(tiny_data_dir, tmp_path):
    """The grid is a setting like any other: processes started with other --learning-rates (or seeds)
    would train different members; each says so in one line and nothing is written."""
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2"}
    out = tmp_path / "run"
    common = ["sweep", "--data-dir", str(tiny_data_dir), "--output-dir", str(out), "--num-steps", "20",
              "--devices", "all", "--no-progress", "--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2"]
    rates = ["0.05,0.2,0.5,1.0", "0.1,0.2,0.3,0.4"]
    results = _finish([subprocess.Popen([str(JAXLIN), *common, "--process-id", str(i), "--learning-rates", rates[i]],
                                        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                       for i in range(2)])
    assert [r[0] for r in results] == [2, 2], results
    for _, _, err in results:
        assert err.strip().splitlines()[-1].startswith("jaxlin: error: the processes of this run were started "
                                                       "with different settings"), err
    assert not out.exists()
