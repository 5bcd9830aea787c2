"""Data parallel over simulated CPU devices: real processes with JAX_NUM_CPU_DEVICES=4."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxlin.cli.main import main

pytestmark = pytest.mark.slow


def _jaxlin(*args, devices: int = 4, cwd=None):
    """`jaxlin` in a process that sees `devices` CPU devices (set before JAX starts)."""
    exe = Path(sys.executable).with_name("jaxlin")
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices)}
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=600, check=False,
                          cwd=cwd)


def _params(out: Path) -> dict:
    with np.load(out / "params.npz", allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files if not name.startswith("__")}  # not __model__, __digest__


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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_processes(*args) -> list[subprocess.CompletedProcess]:
    """`jaxlin train ARGS` as processes 0 and 1 of one run, 2 CPU devices each, coordinator on loopback."""
    exe = Path(sys.executable).with_name("jaxlin")
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2"}
    common = ["train", *args, "--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2",
              "--distributed-timeout", "60"]
    processes = [subprocess.Popen([str(exe), *common, "--process-id", str(i)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=300)
        results.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    return results


def test_two_processes_match_one_device_write_once_and_resume(mnist_dir, tmp_path):
    single = {}
    for steps in (200, 300):
        out = tmp_path / f"single-{steps}"
        assert main(["train", "--data-dir", str(mnist_dir), "--output-dir", str(out), "--num-steps", str(steps),
                     "--no-progress"]) == 0
        single[steps] = _params(out)
    out = tmp_path / "two"
    first = _two_processes("--devices", "all", "--data-dir", str(mnist_dir), "--output-dir", str(out),
                           "--num-steps", "200", "--no-progress")
    assert [r.returncode for r in first] == [0, 0], first[0].stderr + first[1].stderr
    assert "device 4 cpu devices (data parallel)" in first[0].stdout and "Wrote" in first[0].stdout
    assert "Accuracy" not in first[1].stdout and "Wrote" not in first[1].stdout  # process 1 reports nothing
    assert "[Gloo]" not in first[0].stdout + first[1].stdout  # the runtime's chatter goes to its log
    assert not list(tmp_path.glob("two*/.staging-*"))
    resumed = _two_processes("--resume", "--output-dir", str(out), "--num-steps", "300", "--no-progress")
    assert [r.returncode for r in resumed] == [0, 0], resumed[0].stderr + resumed[1].stderr
    assert "Resuming" in resumed[0].stdout
    params = _params(out)
    for name, expected in single[300].items():
        assert np.abs(params[name] - expected).max() <= 1e-5 * np.abs(expected).max(), name
    records = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records == [0, 100, 200, 300]  # one writer: no line twice


def test_a_coordinator_that_is_not_there_is_a_clear_error(mnist_dir, tmp_path):
    done = _jaxlin("train", "--data-dir", str(mnist_dir), "--output-dir", str(tmp_path / "out"), "--coordinator",
                   f"127.0.0.1:{_free_port()}", "--num-processes", "2", "--process-id", "1",
                   "--distributed-timeout", "3", devices=2)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "cannot reach the coordinator 127.0.0.1:" in done.stderr and "within 3 s" in done.stderr


def _training_pair(data_dir: Path, out: Path, *extra: str, records: int = 2) -> list[subprocess.Popen]:
    """Processes 0 and 1 of a long two-process run (2 CPU devices each), once `records` evaluations
    are on disk."""
    import time

    exe = Path(sys.executable).with_name("jaxlin")
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2", "PYTHONUNBUFFERED": "1"}
    common = ["train", "--devices", "all", "--data-dir", str(data_dir), "--output-dir", str(out), "--no-progress",
              "--num-steps", str(10**6), "--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2",
              "--eval-every", "100", *extra]  # (a million steps would evaluate every 20,000 by default)
    processes = [subprocess.Popen([str(exe), *common, "--process-id", str(i)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
    deadline = time.monotonic() + 120
    try:
        while not ((out / "metrics.jsonl").exists()
                   and len((out / "metrics.jsonl").read_text().splitlines()) >= records):
            assert time.monotonic() < deadline and all(p.poll() is None for p in processes)
            time.sleep(0.05)
    except BaseException:
        for process in processes:  # no run of a million steps is left behind a failed test
            process.kill()
        raise
    return processes


def test_a_signal_to_one_process_stops_both_after_the_same_chunk(mnist_dir, tmp_path):
    import signal

    out = tmp_path / "run"
    processes = _training_pair(mnist_dir, out, records=3)
    processes[1].send_signal(signal.SIGTERM)  # as when a scheduler pre-empts one host first
    results = [p.communicate(timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [143, 143], results
    lines = [err.strip().splitlines()[-1] for _, err in results]
    assert lines[0] == lines[1] and lines[0].startswith("jaxlin: stopped by SIGTERM at step ")
    step = int(lines[0].split(" at step ")[1].split()[0])
    assert (out / "checkpoints" / str(step)).is_dir()


def test_when_a_peer_dies_the_other_process_ends_within_the_timeout(mnist_dir, tmp_path):
    import signal

    out = tmp_path / "run"
    processes = _training_pair(mnist_dir, out, "--distributed-timeout", "10")
    worker = int(Path(f"/proc/{processes[1].pid}/task/{processes[1].pid}/children").read_text().split()[0])
    os.kill(worker, signal.SIGKILL)  # the training process itself, not the `jaxlin` parent above it
    processes[1].wait()
    _, err = processes[0].communicate(timeout=90)  # not a hang: JAX's heartbeat timeout ends it
    assert processes[0].returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert "Check failure" not in err and "Traceback" not in err
    if last.startswith("jaxlin: error: lost the other processes of this run: "):  # a collective failed first
        return
    assert last.startswith("jaxlin: error: process 0 (of 2) of the run through coordinator 127.0.0.1:"), err
    assert "a peer process died or stopped answering" in last
    log = _runtime_log(last)
    assert "unhealthy" in log.read_text() or "Gloo" in log.read_text()
    assert log.parent == out / "logs"



def test_a_peer_killed_while_a_checkpoint_is_saved_is_one_line(mnist_dir, tmp_path):
    """A checkpoint every step, and process 1's worker SIGKILLed while one is being written: process 0's
    orbax save fails in a collective or a barrier (in the main thread or orbax's background thread);
    the user sees one line naming the coordinator, the lost process and the runtime log."""
    import signal
    import time

    out = tmp_path / "run"
    processes = _training_pair(mnist_dir, out, "--checkpoint-every", "1", "--eval-every", "100000",
                               "--distributed-timeout", "10", records=1)
    checkpoints, deadline = out / "checkpoints", time.monotonic() + 120

    def mid_save() -> bool:
        names = [p.name for p in checkpoints.iterdir()] if checkpoints.is_dir() else []
        return sum(n.isdigit() for n in names) >= 2 and any(not n.isdigit() for n in names)

    while not mid_save() and time.monotonic() < deadline:  # orbax's temporary directory of a save
        assert all(p.poll() is None for p in processes)
        time.sleep(0.005)
    worker = int(Path(f"/proc/{processes[1].pid}/task/{processes[1].pid}/children").read_text().split()[0])
    os.kill(worker, signal.SIGKILL)
    _, err1 = processes[1].communicate(timeout=90)
    _, err = processes[0].communicate(timeout=90)
    lines = err.strip().splitlines()
    assert processes[0].returncode == 1 and len(lines) == 1, err
    assert lines[0].startswith("jaxlin: error: process 0 (of 2) of the run through coordinator 127.0.0.1:"), err
    assert "a peer process died or stopped answering (lost: process 1)" in lines[0] and "Resume with" in lines[0]
    log = _runtime_log(lines[0])
    assert log.parent == out / "logs" and log.read_text().strip()
    assert len(err1.strip().splitlines()) == 1 and "killed from outside" in err1


def test_killing_one_launcher_stops_its_worker_and_the_peer_after_the_same_chunk(mnist_dir, tmp_path):
    import signal
    import time

    out = tmp_path / "run"
    processes = _training_pair(mnist_dir, out)
    worker = int(Path(f"/proc/{processes[1].pid}/task/{processes[1].pid}/children").read_text().split()[0])
    processes[1].send_signal(signal.SIGKILL)  # the kernel then sends its worker SIGTERM
    _, err = processes[0].communicate(timeout=120)
    assert processes[0].returncode == 143, err
    step = int(err.strip().splitlines()[-1].split(" at step ")[1].split()[0])
    assert (out / "checkpoints" / str(step)).is_dir()
    deadline = time.monotonic() + 30
    while Path(f"/proc/{worker}").exists() and "zombie" not in Path(f"/proc/{worker}/status").read_text():
        assert time.monotonic() < deadline, "the orphaned worker kept running"
        time.sleep(0.1)

def _alone(tmp_path, tiny_data_dir, coordinator: str) -> subprocess.CompletedProcess:
    return _jaxlin("train", "--data-dir", str(tiny_data_dir), "--output-dir", str(tmp_path / "out"), "--no-progress",
                   "--coordinator", coordinator, "--num-processes", "2", "--process-id", "0",
                   "--distributed-timeout", "2", devices=2)


def test_process_0_whose_peers_never_come_ends_in_one_line(tmp_path, tiny_data_dir):
    done = _alone(tmp_path, tiny_data_dir, f"127.0.0.1:{_free_port()}")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert "not every process joined in time" in lines[0] and "coordinator 127.0.0.1:" in lines[0]
    assert not (tmp_path / "out").exists()
    _remove_log(_runtime_log(lines[0]))


def _runtime_log(line: str) -> Path:
    import re

    return Path(re.search(r"runtime log: (\S+\.log)", line).group(1))


def _remove_log(log: Path) -> None:
    """Removes a runtime log, and the private directory it was written to if it has one."""
    import shutil

    if log.parent.name.startswith("jaxlin-runtime-"):
        shutil.rmtree(log.parent)
    else:
        log.unlink()


def test_a_runtime_log_never_follows_a_planted_link(tmp_path, tiny_data_dir):
    """Another user's links at the old predictable /tmp name and at the new name in the run's output
    directory: the targets stay untouched and the log lands in a regular file of this user's."""
    import tempfile

    target = tmp_path / "precious"
    target.write_text("keep me")
    port = _free_port()
    old = Path(tempfile.gettempdir()) / f"jaxlin-runtime-coordinator-127-0-0-1-{port}-process-0-of-2.log"
    old.symlink_to(target)
    try:
        (tmp_path / "out" / "logs").mkdir(parents=True)
        (tmp_path / "out" / "logs" / "runtime-process-0-of-2.log").symlink_to(target)
        done = _alone(tmp_path, tiny_data_dir, f"127.0.0.1:{port}")
    finally:
        old.unlink()
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert target.read_text() == "keep me"
    log = _runtime_log(lines[0])
    assert log == tmp_path / "out" / "logs" / "runtime-process-0-of-2.log"
    assert not log.is_symlink() and log.is_file() and log.stat().st_mode & 0o077 == 0
    assert log.read_text().strip() and not list(log.parent.glob(".*.tmp"))


def _saved_log(output_dir: Path, name: str = "runtime-process-1-of-2.log") -> Path:
    import io

    from jaxlin.runtime.supervise import _RuntimeLog

    log = _RuntimeLog(io.BytesIO(b"I0101 00:00:00.0 1 x.cc:1] hello\nF0101 00:00:00.0 1 x.cc:2] gone\n"))
    log.finish()
    return Path(log.save(str(output_dir), name))


def test_the_runtime_log_goes_to_the_output_directory_through_no_link(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    target = tmp_path / "precious"
    target.write_text("keep me")
    (out / "logs").mkdir()
    (out / "logs" / "runtime-process-1-of-2.log").symlink_to(target)
    path = _saved_log(out)
    assert path == out / "logs" / "runtime-process-1-of-2.log" and not path.is_symlink()
    assert "gone" in path.read_text() and target.read_text() == "keep me"
    assert _saved_log(out) == path and sorted(p.name for p in (out / "logs").iterdir()) == [path.name]


@pytest.mark.parametrize("case", ["no output dir", "logs is a link", "logs is a file"])
def test_the_runtime_log_falls_back_to_a_private_directory(tmp_path, case):
    out = tmp_path / "run"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if case != "no output dir":
        out.mkdir()
        if case == "logs is a link":
            (out / "logs").symlink_to(elsewhere)
        else:
            (out / "logs").write_text("not a directory")
    path = _saved_log(out)
    try:
        assert path.is_file() and not path.is_symlink() and "gone" in path.read_text()
        assert path.parent.name.startswith("jaxlin-runtime-") and path.parent.stat().st_mode & 0o777 == 0o700
        assert not list(elsewhere.iterdir())
        assert out.exists() == (case != "no output dir")
    finally:
        _remove_log(path)


def test_a_coordinator_port_in_use_is_refused_at_once(tmp_path, tiny_data_dir):
    """Another program's port, or a running run's: JAX's gRPC service would share it (SO_REUSEPORT)."""
    import socket

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        done = _alone(tmp_path, tiny_data_dir, f"127.0.0.1:{taken.getsockname()[1]}")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "is in use on this host" in lines[0]


def _pair(tmp_path, tiny_data_dir, extra: list[list[str]], timeout: int = 120) -> list[tuple[int, str]]:
    exe = Path(sys.executable).with_name("jaxlin")
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2"}
    common = ["train", "--devices", "all", "--data-dir", str(tiny_data_dir), "--output-dir", str(tmp_path / "run"),
              "--no-progress", "--num-steps", "30", "--coordinator", f"127.0.0.1:{_free_port()}",
              "--distributed-timeout", "10"]
    processes = [subprocess.Popen([str(exe), *common, "--process-id", str(i), *extra[i]], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    return [(p.wait(timeout=timeout), p.communicate()[1]) for p in processes]


def test_an_error_on_one_process_ends_every_process_at_once(tmp_path, tiny_data_dir):
    import time

    start = time.monotonic()
    (code0, err0), (code1, err1) = _pair(tmp_path, tiny_data_dir, [["--num-processes", "2"], [
        "--num-processes", "2", "--data-dir", str(tmp_path / "missing")]])
    assert time.monotonic() - start < 60  # not JAX's shutdown barrier's minutes
    assert (code0, code1) == (2, 2), err0 + err1
    assert err1.strip().splitlines()[-1].startswith("jaxlin: error: ") and "missing" in err1
    assert "process 1 of this run failed before training" in err0 and "Traceback" not in err0 + err1


def test_processes_told_different_numbers_of_processes_refuse(tmp_path, tiny_data_dir):
    (code0, err0), (code1, err1) = _pair(tmp_path, tiny_data_dir, [["--num-processes", "2"],
                                                                  ["--num-processes", "3"]])
    assert (code0, code1) == (2, 2), err0 + err1
    assert "started with different settings" in err0 and "started with different settings" in err1


def test_ctrl_c_while_waiting_for_the_others_to_join_stops_at_once(tmp_path, tiny_data_dir):
    import signal
    import time

    exe = Path(sys.executable).with_name("jaxlin")
    process = subprocess.Popen([str(exe), "train", "--data-dir", str(tiny_data_dir), "--output-dir",
                                str(tmp_path / "out"), "--coordinator", f"127.0.0.1:{_free_port()}",
                                "--num-processes", "2", "--process-id", "0", "--distributed-timeout", "60"],
                               env={**os.environ, "JAX_NUM_CPU_DEVICES": "2"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    time.sleep(4)  # inside jax.distributed.initialize, waiting for process 1
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=20)
    assert process.returncode == 130 and "while waiting for the processes to join" in err


def test_processes_started_with_different_settings_refuse_at_once(tmp_path, tiny_data_dir):
    exe = Path(sys.executable).with_name("jaxlin")
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2"}
    common = ["train", "--data-dir", str(tiny_data_dir), "--output-dir", str(tmp_path / "run"), "--no-progress",
              "--num-steps", "30", "--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2"]
    processes = [subprocess.Popen([str(exe), *common, "--process-id", str(i), "--seed", str(i)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [2, 2]
    for err in errors:
        assert "the processes of this run were started with different settings" in err and "Traceback" not in err


def test_runtime_failures_are_found_behind_wrappers():
    from jaxlin.runtime.supervise import runtime_failure

    class JaxRuntimeError(RuntimeError):  # matched by name, as JAX's own is
        pass

    class Wrapper(Exception):  # like jaxlin's CheckpointWriteError, which keeps `cause`
        def __init__(self, cause):
            super().__init__("cannot write checkpoint 3")
            self.cause = cause

    lost = JaxRuntimeError("UNKNOWN: Gloo AllGather failed: Connection reset by peer")
    try:
        try:
            raise lost
        except JaxRuntimeError as err:
            raise TimeoutError("Timed out while waiting for async_commit_complete barrier.") from err
    except TimeoutError as err:
        timeout = err
    assert runtime_failure(Wrapper(timeout)) is lost  # the runtime's words, not orbax's wrapper
    assert runtime_failure(Wrapper(TimeoutError("Timed out while waiting for a barrier"))) is not None
    assert runtime_failure(OSError(28, "No space left on device")) is None
    assert runtime_failure(Wrapper(OSError(28, "No space left on device"))) is None


def test_a_supervised_child_keeps_library_logs_and_thread_tracebacks_off_the_terminal():
    """What orbax logs from its save thread, and what escapes a background thread, goes to the runtime
    stream (the parent's log); jaxlin's own lines still reach the terminal."""
    script = """
import logging, os, sys, threading
from jaxlin.runtime import supervise
supervise.route_runtime_output()
logging.getLogger("absl").error("Failed to run 4 Handler Commit operations in background save thread")
thread = threading.Thread(target=lambda: 1 / 0, name="async_save")
thread.start()
thread.join()
print("jaxlin: a line for the user", file=sys.stderr)
"""
    read_fd, write_fd = os.pipe()
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "JAXLIN_RUNTIME_LOG_FD": str(write_fd)},
                          pass_fds=(write_fd,), capture_output=True, text=True, timeout=120, check=False)
    os.close(write_fd)
    with os.fdopen(read_fd) as runtime:
        log = runtime.read()
    assert done.returncode == 0 and done.stderr == "jaxlin: a line for the user\n", done.stderr
    assert "Failed to run 4 Handler Commit operations" in log
    assert "Exception in thread async_save" in log and "ZeroDivisionError" in log
