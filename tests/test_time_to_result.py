"""Time to result: the compilation cache, lazy imports, figures off the critical path, the breakdown."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jaxlin.data.idx import DataError

JAXLIN = str(Path(sys.executable).with_name("jaxlin"))


def _train(data_dir: Path, out: Path, *extra: str, env: dict | None = None) -> dict:
    done = subprocess.run([JAXLIN, "train", "--data-dir", str(data_dir), "--output-dir", str(out), "--num-steps",
                           "60", "--eval-every", "30", "--no-progress", *extra], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["train", "--batch-size", "many"],
                                  ["sweep", "--learning-rates", "x"]])
def test_help_and_argument_errors_import_neither_jax_nor_matplotlib(argv):
    script = ("import sys\nfrom jaxlin.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
              "print(sorted(m for m in ('jax', 'jaxlib', 'matplotlib', 'optax', 'orbax') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr


_GRID_2000 = [",".join(f"0.{i + 1:04d}" for i in range(2000)), ",".join(str(i) for i in range(2000))]


@pytest.mark.parametrize("argv, message", [
    (["train", "--batch-size", "0"], "batch size must be at least 1, got 0"),
    (["train", "--devices", "\u00b2"], "devices must be a number >= 1 or all, got '\u00b2'"),
    (["train", "--learning-rate", "1e39"], "learning rate must be a finite number > 0 in float32"),
    (["train", "--coordinator", "127.0.0.1:\u00b2", "--num-processes", "1", "--process-id", "0"],
     "--coordinator 127.0.0.1:\u00b2: expected HOST:PORT"),
    (["train", "--resume", "--unroll", "0"], "unroll must be at least 1, got 0"),
    (["sweep", "--coordinator", "127.0.0.1:1", "--num-processes", "2"],
     "--coordinator, --num-processes and --process-id go together"),
    (["sweep", "--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "2"],
     "--process-id must be in 0..1, got 2"),
    (["sweep", "--seeds", "-1,2"], "--seeds: seed must be in [0, 2**63), got -1"),
    (["sweep", "--seeds=-1,2"], "--seeds: seed must be in [0, 2**63), got -1"),
    (["sweep", "--learning-rates", "-0.1,0.2"], "--learning-rates: learning rate must be a finite number > 0"),
    (["sweep", "--learning-rates", "0.1,1e39"], "--learning-rates: learning rate must be a finite number > 0 in"),
    (["sweep", "--momentums", "0.5"], "--momentums: the sgd optimizer takes no momentum"),
    (["sweep", "--seeds", "1,2,1"], "--seeds lists a value twice: 1"),
    (["sweep", "--resume", "--data-seeds", "-3"], "--data-seeds: data seed must be in [0, 2**63), got -3"),
    (["sweep", "--learning-rates", _GRID_2000[0], "--seeds", _GRID_2000[1], "--dry-run"],
     "the sweep grid has 4,000,000 members (2,000 --learning-rates × 2,000 --seeds); at most 65,536"),
])
def test_bad_settings_are_one_line_before_jax_is_imported(argv, message, tmp_path):
    script = ("import sys\nfrom jaxlin.cli import main\ncode = main(sys.argv[1:])\n"
              "print(code, sorted(m for m in ('jax', 'jaxlib', 'matplotlib', 'optax', 'orbax') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script, *argv, "--output-dir", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "2 []", done.stdout + done.stderr
    assert done.stderr.startswith(f"jaxlin: error: {message}") and len(done.stderr.splitlines()) == 1, done.stderr
    assert not list(tmp_path.iterdir())


def test_a_second_run_hits_the_compilation_cache_and_the_cache_can_be_turned_off(tiny_data_dir, tmp_path):
    first = _train(tiny_data_dir, tmp_path / "first")["timings"]["breakdown"]
    assert first["compile_cache"]["enabled"] and first["compile_cache"]["misses"] > 0
    cached = list((Path(os.environ["JAXLIN_CACHE_DIR"]) / "xla").iterdir())
    assert cached
    second = _train(tiny_data_dir, tmp_path / "second")["timings"]["breakdown"]
    assert second["compile_cache"]["hits"] > 0 and second["compile_cache"]["misses"] == 0
    for name in ("imports_seconds", "backend_start_seconds", "data_load_seconds", "compile_seconds",
                 "training_seconds", "evaluation_seconds", "figures_seconds", "writing_seconds"):
        assert 0 <= second[name] < second["whole_process_seconds"], name
    off = _train(tiny_data_dir, tmp_path / "off", "--no-compile-cache")["timings"]["breakdown"]["compile_cache"]
    assert off == {"enabled": False, "hits": 0, "misses": 0}
    by_env = _train(tiny_data_dir, tmp_path / "env", env={"JAXLIN_COMPILE_CACHE": "0"})
    assert by_env["timings"]["breakdown"]["compile_cache"]["enabled"] is False
    assert len(list((Path(os.environ["JAXLIN_CACHE_DIR"]) / "xla").iterdir())) == len(cached)


def test_a_damaged_cache_entry_is_compiled_again_not_fatal(tiny_data_dir, tmp_path):
    reference = _train(tiny_data_dir, tmp_path / "first")
    for entry in (Path(os.environ["JAXLIN_CACHE_DIR"]) / "xla").iterdir():
        if entry.is_file():
            entry.write_bytes(b"not an executable")
    damaged = _train(tiny_data_dir, tmp_path / "second")
    assert damaged["final_test_accuracy"] == reference["final_test_accuracy"]
    assert damaged["timings"]["breakdown"]["compile_cache"]["hits"] == 0


def test_no_figures_writes_everything_but_the_pngs(tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    metrics = _train(tiny_data_dir, out, "--no-figures")
    assert {p.name for p in out.iterdir()} == {"metrics.json", "metrics.jsonl", "params.npz", "checkpoints",
                                               ".jaxlin.lock"}
    assert metrics["timings"]["breakdown"]["figures_seconds"] < 0.01


def test_the_figure_worker_draws_what_the_run_would_draw(tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    _train(tiny_data_dir, out)
    for name in ("example_images.png", "misclassified.png", "weights.png", "confusion_matrix.png",
                 "learning_curve.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    assert not list(out.glob(".figure-inputs*")) and not list(out.glob(".staging-*"))


# The phases of `timings.breakdown`, in the order a run goes through them (see train_run._breakdown).
_PHASES = ("imports_seconds", "figure_worker_start_seconds", "distributed_start_seconds", "backend_start_seconds",
           "directory_seconds", "data_load_seconds", "planning_seconds", "trainer_setup_seconds", "compile_seconds",
           "training_seconds", "evaluation_seconds", "checkpoint_seconds", "loop_host_seconds",
           "final_evaluation_seconds", "finishing_seconds", "figures_seconds", "writing_seconds")


@pytest.mark.parametrize("extra", [(), ("--no-figures", "--checkpoint-every", "0")])
def test_the_breakdown_adds_up_to_the_whole_process(tiny_data_dir, tmp_path, extra):
    # No timed assertion: the structure, and other_seconds is the whole less every phase.
    breakdown = _train(tiny_data_dir, tmp_path / "run", *extra)["timings"]["breakdown"]
    assert set(breakdown) == {*_PHASES, "compile_cache", "other_seconds", "whole_process_seconds"}
    for name in (*_PHASES, "whole_process_seconds"):
        value = breakdown[name]
        assert isinstance(value, float) and not isinstance(value, bool) and value >= 0, (name, value)
    assert isinstance(breakdown["other_seconds"], float)
    total = sum(breakdown[name] for name in _PHASES) + breakdown["other_seconds"]
    assert total == pytest.approx(breakdown["whole_process_seconds"], abs=1e-9)
    assert sum(breakdown[name] for name in _PHASES) <= breakdown["whole_process_seconds"] + 1e-9
    if "--no-figures" in extra:
        assert breakdown["figure_worker_start_seconds"] == 0.0


def test_large_gzip_files_are_read_from_a_decompressed_copy_until_they_change(tmp_path, monkeypatch):
    import numpy as np

    from helpers import write_idx
    from jaxlin.data import idx

    monkeypatch.setattr(idx, "CACHE_MIN_BYTES", 0)
    rng = np.random.default_rng(0)
    first, second = (rng.integers(0, 255, (50, 28, 28), dtype=np.uint8) for _ in range(2))
    path = write_idx(tmp_path / "train-images-idx3-ubyte.gz", first)
    copies = Path(os.environ["JAXLIN_CACHE_DIR"]) / idx.DECOMPRESSED_DIR
    np.testing.assert_array_equal(idx.read_idx_cached(path, 3), first)
    assert not copies.exists()  # just written: its time could still hide a change (racy), so not copied
    os.utime(path, (1e9, 1e9))
    np.testing.assert_array_equal(idx.read_idx_cached(path, 3), first)
    idx.wait_for_copies()
    [copy] = copies.iterdir()
    read_idx = idx.read_idx
    monkeypatch.setattr(idx, "read_idx", None)  # read from the copy, not the file
    np.testing.assert_array_equal(idx.read_idx_cached(path, 3), first)
    with pytest.raises(TypeError):  # a copy that does not fit the expected shape is not used
        idx.read_idx_cached(path, 3, (27, 28))
    monkeypatch.setattr(idx, "read_idx", read_idx)
    with open(path, "r+b") as file:  # damaged in place, its modification time put back (touch -r): the
        file.seek(path.stat().st_size // 2)  # change time still tells, and the file's own check speaks
        byte = file.read(1)
        file.seek(-1, os.SEEK_CUR)
        file.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, (1e9, 1e9))
    with pytest.raises(DataError):
        idx.read_idx_cached(path, 3)
    write_idx(path, second)  # same size, new content and time: read again, and the old copy dropped
    os.utime(path, (2e9, 2e9))
    np.testing.assert_array_equal(idx.read_idx_cached(path, 3), second)
    idx.wait_for_copies()
    assert [p.name for p in copies.iterdir()] != [copy.name] and len(list(copies.iterdir())) == 1
    next(copies.iterdir()).write_bytes(b"damaged")  # a damaged copy: the file is read again
    np.testing.assert_array_equal(idx.read_idx_cached(path, 3), second)


def test_the_figure_worker_draws_without_importing_jax():
    # It starts beside the run's own import of JAX: importing JAX too would only take CPU from the run.
    script = ("import sys\nfrom jaxlin.runs import figure_worker, plots\n"
              "print(sorted(m for m in ('jax', 'jaxlib', 'optax', 'orbax') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr
