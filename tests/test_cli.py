"""The `jaxlin` command line, run through its real entry point with tiny configs."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import write_dataset
from jaxlin.cli.main import main

FIGURES = {"example_images.png", "misclassified.png", "weights.png", "confusion_matrix.png",
           "learning_curve.png"}
TINY_ARGS = ["--num-steps", "40", "--eval-every", "20", "--batch-size", "50", "--no-progress"]


def train(data_dir, out, *extra):
    return main(["train", "--data-dir", str(data_dir), "--output-dir", str(out), *TINY_ARGS, *extra])


def test_train_writes_everything_and_evaluate_agrees(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(tiny_data_dir, out) == 0
    stdout = capsys.readouterr().out
    assert "Accuracy on test-set:" in stdout and "(before training)" in stdout
    assert {p.name for p in out.iterdir()} == FIGURES | {"metrics.json", "params.npz", "metrics.jsonl",
                                                         "checkpoints", ".jaxlin.lock"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["step"] for e in metrics["evaluations"]] == [0, 20, 40]
    assert metrics["config"]["batch_size"] == 50 and metrics["versions"]["jax"]
    assert metrics["timings"]["train_seconds"] > 0 and metrics["device"]
    assert len(metrics["final_test_per_class_accuracy"]) == 10
    assert np.sum(metrics["final_test_confusion_matrix"]) == 1003
    final = metrics["final_test_accuracy"]
    assert final > 0.9 and f"Accuracy on test-set: {final:.1%} (after 40 steps)" in stdout

    assert main(["evaluate", str(out / "params.npz"), "--data-dir", str(tiny_data_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["test_accuracy"] == final and report["num_examples"] == 1003
    assert main(["evaluate", str(out / "params.npz"), "--data-dir", str(tiny_data_dir)]) == 0
    assert f"Accuracy on test-set: {final:.1%} of 1003 images" in capsys.readouterr().out


def test_train_mlp_with_options(tiny_data_dir, tmp_path):
    out = tmp_path / "mlp"
    assert train(tiny_data_dir, out, "--model", "mlp", "--hidden-sizes", "16,8", "--activation", "tanh",
                 "--optimizer", "momentum", "--learning-rate", "0.05", "--loop", "per-step",
                 "--seed", "3", "--device", "cpu") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "mlp 784-16-8-10 (tanh)"
    assert metrics["config"]["loop"] == "per-step" and metrics["config"]["seed"] == 3


def test_dry_run_writes_nothing(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "dry"
    assert train(tiny_data_dir, out, "--dry-run") == 0
    assert "Dry run" in capsys.readouterr().out
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--learning-rate", "0"], "learning rate must be a finite number > 0"),
    (["--learning-rate", "-0.5"], "learning rate must be a finite number > 0"),
    (["--learning-rate", "nan"], "learning rate must be a finite number > 0"),
    (["--learning-rate", "inf"], "learning rate must be a finite number > 0"),
    (["--batch-size", "0"], "batch size must be at least 1"),
    (["--batch-size", "601"], "batch size 601 is larger than the training set (600 examples)"),
    (["--num-steps", "-5"], "number of steps must be >= 0"),
    (["--checkpoint-every", "-1"], "checkpoint every must be >= 0"),
    (["--momentum", "1"], "momentum must be in [0, 1)"),
    (["--unroll", "0"], "unroll must be at least 1"),
    (["--model", "resnet"], "unknown model 'resnet'; choose one of linear, mlp, cnn, or give your own as MODULE:NAME"),
    (["--model", "mine:"], "unknown model 'mine:'"),
])
def test_bad_settings_fail_cleanly(tiny_data_dir, tmp_path, capsys, args, message):
    out = tmp_path / "bad"
    assert train(tiny_data_dir, out, *args) != 0
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing half-written
    assert not list(tmp_path.glob(".*staging*"))


@pytest.mark.parametrize("args, message", [
    (["--hidden-sizes", "256,0"], "hidden sizes must be integers >= 1"),
    (["--hidden-sizes", "abc"], "expected comma-separated integers"),
    (["--batch-size", "ten"], "invalid int value"),
])
def test_bad_flags_are_usage_errors(tiny_data_dir, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as info:
        train(tiny_data_dir, tmp_path / "bad", *args)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def _corrupt(directory: Path, how: str) -> None:
    path = directory / "train-images-idx3-ubyte.gz"
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-784]))
    elif how == "corrupt":
        path.write_bytes(path.read_bytes()[:100])


@pytest.mark.parametrize("how, message", [
    ("missing", "missing train-images-idx3-ubyte.gz"),
    ("truncated", "truncated: header (5100, 28, 28) promises"),
    ("corrupt", "promises 3998400 bytes of data, more than a file of its size can hold"),
])
def test_bad_data_files_fail_cleanly(tmp_path, capsys, how, message):
    directory = write_dataset(tmp_path / "data", 5100, 20)
    _corrupt(directory, how)
    assert train(directory, tmp_path / "out") == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_data_dir(tmp_path, capsys):
    assert train(tmp_path / "nowhere", tmp_path / "out") == 2
    assert "does not exist" in capsys.readouterr().err


def test_output_dir_that_is_a_file(tiny_data_dir, tmp_path, capsys):
    (tmp_path / "file").write_text("keep me")
    assert train(tiny_data_dir, tmp_path / "file") == 2
    assert "is not a directory" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "keep me"


@pytest.fixture(scope="module")
def saved_linear(tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("saved")
    assert train(tiny_data_dir, out) == 0
    return out / "params.npz"


def test_evaluate_rejects_bad_params(tiny_data_dir, saved_linear, tmp_path, capsys):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"junk")
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, **{"layers/0/w": np.zeros((784, 3), np.float32), "layers/0/b": np.zeros(10, np.float32),
                       "__model__": np.array(json.dumps({"name": "linear", "layer_sizes": [784, 10],
                                                         "activation": "none"}))})
    cases = [(junk, [], "not a params file (an .npz written by `jaxlin train`)"),
             (tmp_path / "absent.npz", [], "no such params file"),
             (wrong, [], "layers/0/w is float32[784, 3], expected float32[784, 10]"),
             (saved_linear, ["--model", "mlp"], "params are for model linear 784-10, not mlp")]
    for path, extra, message in cases:
        assert main(["evaluate", str(path), "--data-dir", str(tiny_data_dir), *extra]) == 2
        assert message in capsys.readouterr().err


def test_help_texts(capsys):
    for argv in (["--help"], ["train", "--help"], ["evaluate", "--help"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--dataset", "--data-dir", "--model", "--hidden-sizes", "--optimizer", "--learning-rate",
                 "--batch-size", "--num-steps", "--seed", "--eval-every", "--output-dir", "--device",
                 "--dry-run", "--loop", "--resume", "--overwrite", "--checkpoint-every"):
        assert flag in text


def test_every_config_field_has_a_flag_with_help(capsys):
    from jaxlin.config import CONFIG_FIELDS

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for name, field in CONFIG_FIELDS.items():
        assert f"--{name.replace('_', '-')}" in text
        assert field.metadata["help"].split()[0] in text


def test_flags_reach_the_config(tiny_data_dir, tmp_path):
    out = tmp_path / "o"
    assert train(tiny_data_dir, out, "--optimizer", "momentum", "--momentum", "0.5", "--learning-rate", "0.05",
                 "--unroll", "2", "--steps-per-call", "7", "--checkpoint-every", "10", "--keep-checkpoints", "2") == 0
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert (config["momentum"], config["unroll"], config["steps_per_call"]) == (0.5, 2, 7)
    assert (config["checkpoint_every"], config["keep_checkpoints"]) == (10, 2)
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir()) == [30, 40]


def test_console_script_runs(tiny_data_dir, tmp_path):
    """The installed `jaxlin` entry point, in its own process."""
    exe = Path(sys.executable).with_name("jaxlin")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "jaxlin.cli"]
    env = {**os.environ, "JAXLIN_DATA_DIR": str(tiny_data_dir)}
    done = subprocess.run([*command, "train", "--output-dir", str(tmp_path / "o"), *TINY_ARGS],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Accuracy on test-set" in done.stdout and (tmp_path / "o" / "params.npz").exists()
    bad = subprocess.run([*command, "train", "--learning-rate", "-1"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "learning rate" in bad.stderr


def test_device_gpu_without_a_gpu_is_a_clear_error(tiny_data_dir, tmp_path, capsys):
    import jax

    if any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("this machine has a GPU")
    assert train(tiny_data_dir, tmp_path / "out", "--device", "gpu") == 2
    assert "--device gpu: JAX sees no GPU" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_failure_while_writing_leaves_no_final_output(tiny_data_dir, tmp_path, monkeypatch, capsys):
    from jaxlin.runs import params_file as checkpoint

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_params", broken)  # after the figures, before metrics.json
    out = tmp_path / "out"
    assert train(tiny_data_dir, out) == 2
    assert "cannot write outputs: disk full" in capsys.readouterr().err
    # The records and checkpoints of the training stay (the run can be resumed); no final output,
    # no staging directory.
    assert {p.name for p in out.iterdir()} == {"metrics.jsonl", "checkpoints", ".jaxlin.lock"}
    assert list(tmp_path.iterdir()) == [out]


def test_divergence_keeps_the_record_and_writes_no_outputs(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert train(tiny_data_dir, out, "--learning-rate", "1e38") == 3
    assert "training diverged at step" in capsys.readouterr().err
    assert not (out / "metrics.json").exists() and not (out / "params.npz").exists()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["step"] == 0


def test_the_cnn_trains_evaluates_saves_and_reloads_through_the_same_code(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "cnn"
    assert main(["train", "--data-dir", str(tiny_data_dir), "--output-dir", str(out), "--model", "cnn",
                 "--optimizer", "adam", "--learning-rate", "0.001", "--num-steps", "6", "--eval-every", "3",
                 "--batch-size", "20", "--steps-per-call", "3", "--unroll", "3", "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert "Model: cnn 784-conv32-conv64-256-10" in stdout
    assert "(No weights figure: the first layer of the cnn is not dense.)" in stdout
    assert {p.name for p in out.iterdir()} >= (FIGURES - {"weights.png"}) | {"params.npz", "metrics.json"}
    assert not (out / "weights.png").exists()
    final = json.loads((out / "metrics.json").read_text())["final_test_accuracy"]
    assert main(["evaluate", str(out / "params.npz"), "--data-dir", str(tiny_data_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == final
    assert main(["train", "--resume", "--output-dir", str(out), "--num-steps", "9", "--no-progress"]) == 0
    assert "Resuming" in capsys.readouterr().out


def _command() -> list[str]:
    exe = Path(sys.executable).with_name("jaxlin")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "jaxlin.cli"]


@pytest.mark.slow
@pytest.mark.parametrize("stdout", ["pipe closed at once", "pipe closed after one line", "closed"])
def test_a_stdout_that_is_closed_or_whose_reader_left_does_not_stop_the_run(tiny_data_dir, tmp_path, stdout):
    """`jaxlin train | head -1` and `jaxlin train >&-`: the run goes on, writes its outputs, exits 0."""
    out, stderr_path = tmp_path / "run", tmp_path / "stderr.txt"
    command = [*_command(), "train", "--data-dir", str(tiny_data_dir), "--output-dir", str(out), *TINY_ARGS]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(stderr_path, "w") as stderr:
        if stdout == "closed":
            process = subprocess.Popen(["bash", "-c", 'exec "$@" >&-', "bash", *command], stderr=stderr, env=env)
        else:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=env)
            if stdout == "pipe closed after one line":
                assert process.stdout.readline().startswith(b"Data:")
            process.stdout.close()  # no reader left: the run's next write to stdout is a broken pipe
        code = process.wait(timeout=300)
    errors = stderr_path.read_text()
    assert code == 0, errors
    assert "Traceback" not in errors and "Error" not in errors, errors
    assert (out / "metrics.json").exists() and (out / "params.npz").exists()
    assert FIGURES <= {p.name for p in out.iterdir()}


def test_a_backend_that_cannot_start_is_one_line(tmp_path):
    """JAX_PLATFORMS=tpu on a machine without libtpu fails inside JAX, locally (never run where a TPU
    runtime is installed: it would look for TPUs)."""
    import importlib.util

    if importlib.util.find_spec("libtpu") is not None:
        pytest.skip("libtpu is installed here")
    env = {**os.environ, "JAX_PLATFORMS": "tpu"}
    for argv in (["train", "--output-dir", str(tmp_path / "t"), "--dry-run"],
                 ["sweep", "--output-dir", str(tmp_path / "s"), "--dry-run"],
                 ["evaluate", str(tmp_path / "params.npz")],
                 ["predict", str(tmp_path / "params.npz"), str(tmp_path / "digit.png")]):
        done = subprocess.run([*_command(), *argv], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith("jaxlin: error: JAX could not start its backend (JAX_PLATFORMS=tpu): "), \
            done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "out").symlink_to("out"), "output dir {out}: is a symlink loop"),
    (lambda d: (d / "out").symlink_to("elsewhere"), "output dir {out}: is a symlink to elsewhere, which does not"),
], ids=["loop", "dangling"])
def test_an_output_dir_that_is_a_bad_symlink_is_one_line(tiny_data_dir, tmp_path, capsys, make, message):
    make(tmp_path)
    for out in (tmp_path / "out", tmp_path / "out" / "sub"):
        if "loop" not in message and out.name == "sub":
            continue
        assert train(tiny_data_dir, out) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"jaxlin: error: {message.format(out=out)}") and len(err.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (tmp_path / "out").is_symlink()


def test_a_huge_sweep_grid_is_refused_from_its_sizes_before_any_member_is_built():
    import tracemalloc

    from jaxlin.config import MAX_SWEEP_MEMBERS, Config, ConfigError, check_grid_size
    from jaxlin.training.sweep import Grid

    values = ",".join(str(i) for i in range(2000))
    tracemalloc.start()
    try:
        code = main(["sweep", "--learning-rates", ",".join(f"0.{i + 1:04d}" for i in range(2000)), "--seeds",
                     values, "--dry-run"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 2 and peak < 20_000_000  # 4 million member configs would take gigabytes
    grid = Grid(learning_rates=tuple(0.001 * (i + 1) for i in range(300)), seeds=tuple(range(300)))
    with pytest.raises(ConfigError, match=f"90,000 members .*; at most {MAX_SWEEP_MEMBERS:,}"):
        grid.members(Config())
    assert check_grid_size(Grid(seeds=tuple(range(MAX_SWEEP_MEMBERS))).sizes()) == MAX_SWEEP_MEMBERS
    with pytest.raises(ConfigError):
        check_grid_size(Grid(seeds=tuple(range(MAX_SWEEP_MEMBERS)), data_seeds=(0, 1)).sizes())



def test_resume_conflicts_compare_settings_as_the_run_uses_them():
    from jaxlin.config import Config, resume_conflicts

    saved = Config(seed=3)
    assert resume_conflicts(saved, saved.replace(data_seed=3)) == []  # no data seed: the seed's order
    assert resume_conflicts(saved, saved.replace(data_seed=4)) == ["--data-seed 4 (the checkpoint has the default)"]
    assert resume_conflicts(saved, saved.replace(learning_rate=0.1)) == ["--learning-rate 0.1 (the checkpoint has 0.5)"]


def test_every_command_is_a_module_with_add_parser_and_run(capsys):
    """Dispatch is the COMMANDS table: each command's parser comes from its module, and `jaxlin --help`
    lists exactly the table's commands."""
    from jaxlin.cli.main import COMMANDS

    for name, module in COMMANDS.items():
        assert module.__name__ == f"jaxlin.cli.{name}" and callable(module.add_parser) and callable(module.run)
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "{" + ",".join(COMMANDS) + "}" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_train_and_sweep_take_the_several_processes_flags(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "several processes (hosts)" in text
    for flag in ("--coordinator", "--num-processes", "--process-id", "--distributed", "--distributed-timeout"):
        assert flag in text
    assert main([command, "--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "0",
                 "--distributed-timeout", "0"]) == 2
    assert "--distributed-timeout must be at least 1 second" in capsys.readouterr().err


def test_the_supervisor_names_the_resume_command_of_what_it_supervises(tmp_path):
    from jaxlin.cli.hosts import resume_hint
    from jaxlin.runs.rundir import CHECKPOINT_DIR

    out = tmp_path / "run dir"
    assert resume_hint("sweep", str(out)) == ""  # no checkpoints: nothing to resume
    (out / CHECKPOINT_DIR / "20").mkdir(parents=True)
    assert f"Resume with: jaxlin sweep --resume --output-dir '{out}'" in resume_hint("sweep", str(out))
    assert f"Resume with: jaxlin train --resume --output-dir '{out}'" in resume_hint("train", str(out))


def test_a_second_in_process_call_reports_its_own_timings(tiny_data_dir, tmp_path):
    """The process-wide marks and cache counts start afresh with each command that `main` runs."""
    from jaxlin.runtime import timing

    assert train(tiny_data_dir, tmp_path / "first") == 0
    first = json.loads((tmp_path / "first" / "metrics.json").read_text())["timings"]["breakdown"]["compile_cache"]
    assert train(tiny_data_dir, tmp_path / "second") == 0
    second = json.loads((tmp_path / "second" / "metrics.json").read_text())["timings"]["breakdown"]["compile_cache"]
    if first["enabled"]:
        assert second["hits"] + second["misses"] <= first["hits"] + first["misses"]  # not the sum of both
    assert main(["evaluate", str(tmp_path / "second" / "params.npz"), "--data-dir", str(tiny_data_dir)]) == 0
    assert "imports" not in timing.marks and "backend_start" not in timing.marks
