"""Runs that are killed, stopped, raced and resumed: real processes, real signals, real locks."""

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

# An MLP with Adam: the optimizer state (moments, step count) must survive a resume too.
RUN_ARGS = ["--model", "mlp", "--hidden-sizes", "16", "--optimizer", "adam", "--learning-rate", "0.001",
            "--batch-size", "50", "--eval-every", "100", "--checkpoint-every", "50", "--steps-per-call", "30"]
NUM_STEPS = 1500


_MACHINE_CACHE: dict[str, Path] = {}


@pytest.fixture(scope="module", autouse=True)
def machine_cache(tmp_path_factory):
    """One jaxlin cache for every run of this module, as on one machine: the runs compared bit for bit
    (an uninterrupted reference, interrupted and resumed runs) share compiled programs, as runs on one
    machine do (their bits do not depend on it: tests/test_determinism.py)."""
    _MACHINE_CACHE["dir"] = tmp_path_factory.mktemp("machine-cache")
    yield
    _MACHINE_CACHE.clear()


def _command() -> list[str]:
    exe = Path(sys.executable).with_name("jaxlin")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "jaxlin.cli"]


class Run:
    """`jaxlin train` in its own process, its output going to files that the test can poll."""

    def __init__(self, data_dir: Path, out: Path, *args: str, logs: Path | None = None):
        self.out = out
        logs = logs or out.parent
        stamp = f"{out.name}-{time.monotonic_ns()}"
        self.stdout_path, self.stderr_path = logs / f"{stamp}.out", logs / f"{stamp}.err"
        # Created by jaxlin once its signal handlers are installed (jaxlin.cli.main.READY_FILE_ENV): before
        # that, a signal lands in the interpreter's own start, which no program can make clean.
        self.ready_path = logs / f"{stamp}.ready"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "JAXLIN_DATA_DIR": str(data_dir),
               "JAXLIN_CACHE_DIR": str(_MACHINE_CACHE["dir"]), "JAXLIN_TEST_READY_FILE": str(self.ready_path)}
        with open(self.stdout_path, "w") as stdout, open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen([*_command(), "train", "--output-dir", str(out), "--no-progress", *args],
                                            stdout=stdout, stderr=stderr, env=env)
        self.started = time.monotonic()

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait(self, timeout: float = 120) -> int:
        return self.process.wait(timeout)

    def wait_until(self, condition, timeout: float = 60, what: str = "condition") -> float:
        """Polls every millisecond; returns the seconds waited. Fails if the process ends first."""
        start = time.monotonic()
        while not condition():
            if self.process.poll() is not None:
                pytest.fail(f"jaxlin ended ({self.process.returncode}) before {what}:\n{self.stdout}\n{self.stderr}")
            if time.monotonic() - start > timeout:
                self.process.kill()
                pytest.fail(f"no {what} within {timeout} s:\n{self.stdout}\n{self.stderr}")
            time.sleep(0.001)
        return time.monotonic() - start

    def records(self) -> list[dict]:
        return read_records(self.out)

    @property
    def ready(self) -> bool:
        """jaxlin's handlers are installed (it is about to import JAX)."""
        return self.ready_path.exists()

    def maps(self) -> str:
        """The files mapped into the process: its shared libraries, as they are loaded."""
        try:
            return Path(f"/proc/{self.process.pid}/maps").read_text()
        except OSError:
            return ""

    def open_files(self) -> list[str]:
        try:
            return [os.readlink(fd) for fd in Path(f"/proc/{self.process.pid}/fd").iterdir()]
        except OSError:  # a descriptor closed while listed: try again on the next poll
            return []

    def peak_memory_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def read_records(out: Path) -> list[dict]:
    """The complete lines of metrics.jsonl (one may be half-written while a run appends)."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def _params(out: Path) -> dict:
    with np.load(out / "params.npz", allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def _without_times(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "elapsed_seconds"} for r in records]


def _tmp_checkpoint(out: Path) -> bool:
    directory = out / "checkpoints"
    return directory.is_dir() and any("tmp" in p.name for p in directory.iterdir())


@pytest.fixture(scope="module")
def reference(tiny_data_dir, tmp_path_factory) -> Path:
    """The uninterrupted run that the interrupted ones must match bit for bit."""
    out = tmp_path_factory.mktemp("reference") / "run"
    run = Run(tiny_data_dir, out, "--num-steps", str(NUM_STEPS), *RUN_ARGS)
    assert run.wait() == 0, run.stderr
    return out


def test_sigkill_at_several_points_then_resume_gives_bit_identical_params(tiny_data_dir, tmp_path, reference):
    out = tmp_path / "run"
    kill_points = [
        ("after the second evaluation record", lambda run: len(run.records()) >= 2),
        ("while a checkpoint is being written", lambda run: len(run.records()) >= 6 and _tmp_checkpoint(out)),
        ("while the final outputs are staged", lambda run: any(p.name.startswith(".staging-")
                                                              for p in out.iterdir())),
    ]
    args = ["--num-steps", str(NUM_STEPS), *RUN_ARGS]
    run = Run(tiny_data_dir, out, *args)
    for what, condition in kill_points:
        run.wait_until(lambda run=run, condition=condition: condition(run), what=what)
        run.process.send_signal(signal.SIGKILL)
        assert run.wait() == -signal.SIGKILL
        if "checkpoint" in what:
            assert _tmp_checkpoint(out)  # killed mid-save: orbax's temporary directory is left behind
        if "staged" in what:
            assert not (out / "metrics.json").exists()
        run = Run(tiny_data_dir, out, "--resume")
    assert run.wait() == 0, run.stderr
    assert "Resuming" in run.stdout and "Traceback" not in run.stderr

    resumed, uninterrupted = _params(out), _params(reference)
    assert resumed.keys() == uninterrupted.keys()
    for name in uninterrupted:
        np.testing.assert_array_equal(resumed[name], uninterrupted[name])  # bit for bit
    assert _without_times(run.records()) == _without_times(read_records(reference))
    metrics = _strict_json((out / "metrics.json").read_text())
    assert metrics["final_test_accuracy"] == _strict_json((reference / "metrics.json").read_text())[
        "final_test_accuracy"]
    assert [e["step"] for e in metrics["evaluations"]] == list(range(0, NUM_STEPS + 1, 100))
    assert not _tmp_checkpoint(out)  # the killed save's leftovers are gone
    assert not [p for p in out.iterdir() if p.name.startswith(".staging-")]


def _checkpoint_steps(out: Path) -> list[int]:
    directory = out / "checkpoints"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def test_sigkill_between_timed_checkpoints_then_resume_gives_bit_identical_params(tiny_data_dir, tmp_path, reference):
    """Checkpoints by wall time (`--checkpoint-every 0.05s`: at the first chunk boundary after each
    0.05 s, wherever that falls between evaluations), killed after one was written and training went
    on past it: the resumed run ends with the reference's params and records, bit for bit."""
    out = tmp_path / "run"
    timed = [*RUN_ARGS[:RUN_ARGS.index("--checkpoint-every")], *RUN_ARGS[RUN_ARGS.index("--checkpoint-every") + 2:],
             "--checkpoint-every", "0.05s"]
    run = Run(tiny_data_dir, out, "--num-steps", str(NUM_STEPS), *timed)

    def past_a_timed_checkpoint():
        steps = [step for step in _checkpoint_steps(out) if step > 0]
        return steps and any(r["step"] > steps[-1] for r in run.records())

    run.wait_until(past_a_timed_checkpoint, what="training past a timed checkpoint")
    run.process.send_signal(signal.SIGKILL)
    assert run.wait() == -signal.SIGKILL
    killed_at = max(r["step"] for r in run.records())
    resumed_from = max(_checkpoint_steps(out))
    assert 0 < resumed_from < NUM_STEPS
    finish = Run(tiny_data_dir, out, "--resume")
    assert finish.wait() == 0, finish.stderr
    assert f"Resuming {out} from step " in finish.stdout and "Traceback" not in finish.stderr
    resumed, uninterrupted = _params(out), _params(reference)
    for name in uninterrupted:
        np.testing.assert_array_equal(resumed[name], uninterrupted[name])  # bit for bit
    assert _without_times(finish.records()) == _without_times(read_records(reference))
    assert killed_at < NUM_STEPS
    assert _strict_json((out / "metrics.json").read_text())["config"]["checkpoint_every"] == "0.05s"


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_checkpoints_and_names_the_resume_command(tiny_data_dir, tmp_path, signum, code):
    out = tmp_path / "run"
    # 10**12 steps: the schedule is lazy, so training starts at once and memory stays flat.
    run = Run(tiny_data_dir, out, "--num-steps", str(10**12), "--batch-size", "2", "--eval-every", "100")
    run.wait_until(lambda: "Model:" in run.stdout, what="the plan")
    # Training starts at once (a schedule of 10**12 steps built up front would take hours and all memory).
    run.wait_until(lambda: any(r["step"] > 0 for r in run.records()), timeout=120,
                   what="the first evaluation after training")
    assert run.peak_memory_mb() < 2000
    run.process.send_signal(signum)
    assert run.wait() == code
    stderr = run.stderr
    assert "Traceback" not in stderr
    line = stderr.strip().splitlines()[-1]
    step = int(line.split(" at step ")[1].split()[0])
    assert line.startswith(f"jaxlin: stopped by {signal.Signals(signum).name} at step {step} of {10**12}")
    assert line.endswith(f"Resume with: jaxlin train --resume --output-dir {out}")
    assert (out / "checkpoints" / str(step)).is_dir() and not _tmp_checkpoint(out)
    assert not (out / "metrics.json").exists()

    finish = Run(tiny_data_dir, out, "--resume", "--num-steps", str(step + 30))
    assert finish.wait() == 0, finish.stderr
    assert f"Resuming {out} from step {step} of {step + 30}" in finish.stdout
    metrics = _strict_json((out / "metrics.json").read_text())
    assert metrics["num_steps"] == step + 30 and metrics["resumed_from_step"] == step
    assert metrics["config"]["batch_size"] == 2  # taken from the checkpoint


def test_a_second_signal_exits_at_once(tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    # One chunk of a million steps: far longer than the test waits.
    run = Run(tiny_data_dir, out, "--num-steps", str(10**6), "--eval-every", str(10**6),
              "--steps-per-call", str(10**6), "--batch-size", "2")
    run.wait_until(lambda: len(run.records()) == 1, what="the evaluation before training")
    time.sleep(0.5)  # inside the compiled chunk
    run.process.send_signal(signal.SIGTERM)
    run.wait_until(lambda: "stopping after the current chunk" in run.stderr, what="the first signal's notice")
    run.process.send_signal(signal.SIGTERM)
    assert run.wait(timeout=10) == -signal.SIGTERM


def test_a_second_run_into_a_busy_directory_exits_at_once(tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    first = Run(tiny_data_dir, out, "--num-steps", str(10**6), "--batch-size", "2", "--eval-every", "100")
    first.wait_until(lambda: len(first.records()) >= 2, what="training")
    second = Run(tiny_data_dir, out, "--num-steps", "40", "--seed", "1", "--overwrite", logs=tmp_path)
    assert second.wait(timeout=60) == 2
    assert f"output dir {out} is in use by another jaxlin run (PID {first.process.pid})" in second.stderr
    assert "Data:" not in second.stdout  # refused before loading any data
    assert first.process.poll() is None  # undisturbed
    first.process.send_signal(signal.SIGTERM)
    assert first.wait() == 143
    records = first.records()
    assert records and all(r["step"] % 100 == 0 for r in records)
    assert (out / "checkpoints" / str(records[-1]["step"])).is_dir()


def test_a_finished_run_is_not_replaced_without_overwrite(tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    tiny = ["--num-steps", "40", "--eval-every", "20", "--batch-size", "50"]
    assert Run(tiny_data_dir, out, *tiny).wait() == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".jaxlin.lock"}
    (out / "notes.txt").write_text("mine")
    again = Run(tiny_data_dir, out, *tiny, "--seed", "1", logs=tmp_path)
    assert again.wait() == 2
    assert f"output dir {out} already holds a jaxlin train run" in again.stderr and "--overwrite" in again.stderr
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".jaxlin.lock"}
    assert after == {**before, "notes.txt": b"mine"}

    (out / ".staging-stale").mkdir()  # what a run killed while publishing leaves behind
    replaced = Run(tiny_data_dir, out, *tiny, "--seed", "1", "--overwrite", "--checkpoint-every", "0",
                   logs=tmp_path)
    assert replaced.wait() == 0, replaced.stderr
    assert (out / "notes.txt").read_text() == "mine"  # unrelated files stay
    assert not (out / ".staging-stale").exists() and not (out / "checkpoints").exists()
    assert _strict_json((out / "metrics.json").read_text())["config"]["seed"] == 1


def _make_read_only(directory: Path):
    """chmod for a normal user; root ignores permission bits, so it gets the immutable attribute."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        return lambda: directory.chmod(0o755)
    done = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot make a directory read-only as root here: {done.stderr!r}")
    return lambda: subprocess.run(["chattr", "-i", str(directory)], check=True)


def test_a_read_only_output_dir_fails_before_training(tiny_data_dir, tmp_path):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    inner = read_only / "writable"
    inner.mkdir()
    undo = _make_read_only(read_only)
    try:
        run = Run(tiny_data_dir, read_only, "--num-steps", "40", logs=tmp_path)
        assert run.wait() == 2
        assert f"output dir {read_only}: cannot write in it" in run.stderr
        assert "Accuracy" not in run.stdout and "Data:" not in run.stdout  # nothing trained, nothing loaded
        under = Run(tiny_data_dir, read_only / "new", "--num-steps", "40", logs=tmp_path)
        assert under.wait() == 2 and f"cannot write under {read_only}" in under.stderr
        # `--output-dir .` in a writable directory whose parent is read-only.
        env = {**os.environ, "JAXLIN_DATA_DIR": str(tiny_data_dir)}
        here = subprocess.run([*_command(), "train", "--output-dir", ".", "--num-steps", "20", "--eval-every",
                               "10", "--no-progress"], cwd=inner, env=env, capture_output=True, text=True,
                              timeout=300, check=False)
        assert here.returncode == 0, here.stderr
        assert (inner / "metrics.json").exists()
    finally:
        undo()


def test_records_and_metrics_are_strict_json_with_only_used_settings(tiny_data_dir, tmp_path):
    out = tmp_path / "zero"
    run = Run(tiny_data_dir, out, "--num-steps", "0")
    assert run.wait() == 0, run.stderr
    assert "Accuracy on test-set: " in run.stdout and "(before training)" in run.stdout
    metrics = _strict_json((out / "metrics.json").read_text())
    records = [_strict_json(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0] and records[0]["train_loss"] is None
    assert metrics["timings"]["steps_per_second"] is None
    config = metrics["config"]
    assert "hidden_sizes" not in config and "activation" not in config and "momentum" not in config
    assert config["optimizer"] == "sgd" and config["num_steps"] == 0
    assert metrics["versions"]["jaxlin"] and "jaxlin_commit" in metrics["versions"]


def test_resume_refuses_what_would_not_continue_the_same_run(tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    nothing = Run(tiny_data_dir, out, "--resume", logs=tmp_path)
    assert nothing.wait() == 2 and f"--resume: no checkpoints in {out}" in nothing.stderr
    assert Run(tiny_data_dir, out, "--num-steps", "60", "--eval-every", "20", "--batch-size", "50").wait() == 0
    cases = [(["--learning-rate", "0.1"], "--learning-rate 0.1 (the checkpoint has 0.5)"),
             (["--batch-size", "20", "--seed", "3"], "--batch-size 20 (the checkpoint has 50); --seed 3"),
             (["--num-steps", "20"], "--num-steps 20 is below the checkpoint's step 60")]
    for args, message in cases:
        refused = Run(tiny_data_dir, out, "--resume", *args, logs=tmp_path)
        assert refused.wait() == 2 and message in refused.stderr, refused.stderr
    done = Run(tiny_data_dir, out, "--resume", logs=tmp_path)
    assert done.wait() == 0 and "already finished at step 60" in done.stdout


# Moments of a run, each seen from outside as the process reaches it (not after a delay, which a
# loaded machine stretches), and the signal sent as soon as the test sees it: JAX's import about to
# start (jaxlin's handlers installed), inside it (jaxlib's extension mapped), the data being read (its
# files open; or just read), the evaluation compiling (the plan printed), the training chunk compiling
# (the evaluation before training recorded), training (a later evaluation recorded).
MOMENTS = {
    "imports": lambda run, data: run.ready,
    "jax-import": lambda run, data: "jaxlib" in run.maps(),
    "data": lambda run, data: (any(path.startswith(str(data)) for path in run.open_files())
                                               or "Data:" in run.stdout),
    "eval-compile": lambda run, data: "Model:" in run.stdout,
    "chunk-compile": lambda run, data: len(run.records()) >= 1,
    "training": lambda run, data: any(r["step"] > 0 for r in run.records()),
}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_ctrl_c_at_any_moment_stops_the_run(tiny_data_dir, tmp_path, moment):
    """During imports, data loading, compilation or training: never lost, never a traceback."""
    run = Run(tiny_data_dir, tmp_path / "run", "--num-steps", str(10**6), "--batch-size", "2", "--eval-every", "100")
    run.wait_until(lambda: run.ready and MOMENTS[moment](run, tiny_data_dir), timeout=120, what=moment)
    run.process.send_signal(signal.SIGINT)
    assert run.wait() == 130, run.stderr
    assert "Traceback" not in run.stderr and "stopped by SIGINT" in run.stderr
    assert "after 1000000 steps" not in run.stdout


def test_a_lock_file_that_is_a_symlink_is_refused(tiny_data_dir, tmp_path):
    out, victim = tmp_path / "run", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("important")
    (out / ".jaxlin.lock").symlink_to(victim)
    run = Run(tiny_data_dir, out, "--num-steps", "10", logs=tmp_path)
    assert run.wait() == 2
    assert f"output dir {out}: cannot use its lock file .jaxlin.lock" in run.stderr
    assert victim.read_text() == "important"
