"""Seeing inside a run: --tensorboard event files read back with TensorBoard's own reader, --profile traces."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxlin.cli.main import main

pytest.importorskip("tensorboardX")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

TINY = ["--no-progress", "--no-figures", "--checkpoint-every", "0"]


def read_scalars(directory: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in `directory`'s event files, as TensorBoard loads them: tag -> [(step, value)]."""
    accumulator = event_accumulator.EventAccumulator(str(directory), size_guidance={event_accumulator.SCALARS: 0})
    accumulator.Reload()
    return {tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def read_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def assert_close_series(series, expected):
    """Event values are float32: equal to the records' float64 numbers at float32 precision."""
    assert [step for step, _ in series] == [step for step, _ in expected]
    for (_, value), (_, wanted) in zip(series, expected):
        assert value == pytest.approx(wanted, rel=1e-6)


def test_train_tensorboard_matches_the_records(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data-dir", str(tiny_data_dir), "--output-dir", str(out), "--num-steps", "60",
                 "--eval-every", "20", "--schedule", "cosine", "--tensorboard", *TINY])
    assert code == 0, capsys.readouterr().err
    records = read_records(out)
    scalars = read_scalars(out / "tensorboard")
    assert set(scalars) == {"accuracy/test", "loss/train", "learning_rate", "steps_per_second"}
    assert_close_series(scalars["accuracy/test"], [(r["step"], r["test_accuracy"]) for r in records])
    assert_close_series(scalars["loss/train"], [(r["step"], r["train_loss"]) for r in records if r["step"]])
    # The cosine schedule's own numbers: 0.5 at step 0, half of it halfway, 0 at the end.
    rates = dict(scalars["learning_rate"])
    assert rates[0] == pytest.approx(0.5) and rates[60] == pytest.approx(0.0, abs=1e-7)
    assert rates[20] == pytest.approx(0.5 * 0.5 * (1 + 0.5), rel=1e-5)  # cos(pi / 3) = 0.5
    assert [step for step, _ in scalars["steps_per_second"]] == [20, 40, 60]
    assert all(value > 0 for _, value in scalars["steps_per_second"])


def test_sweep_tensorboard_has_a_run_per_member(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["sweep", "--data-dir", str(tiny_data_dir), "--output-dir", str(out), "--num-steps", "40",
                 "--eval-every", "20", "--learning-rates", "0.05,0.5", "--seeds", "0,1", "--validation-size", "100",
                 "--tensorboard", "--profile", "--no-progress", "--checkpoint-every", "0"])
    assert code == 0, capsys.readouterr().err
    records = read_records(out)
    traces = list((out / "profile").glob("plugins/profile/*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0  # the chunk after the first: steps 20 to 40
    members = sorted(p.name for p in (out / "tensorboard").iterdir())
    assert members == ["0_learning_rate=0.05,seed=0", "1_learning_rate=0.05,seed=1", "2_learning_rate=0.5,seed=0",
                       "3_learning_rate=0.5,seed=1"]
    for index, name in enumerate(members):
        scalars = read_scalars(out / "tensorboard" / name)
        assert_close_series(scalars["accuracy/validation"],
                            [(r["step"], r["validation_accuracy"][index]) for r in records])
        assert dict(scalars["learning_rate"])[20] == pytest.approx((0.05, 0.5)[index // 2])


def _command() -> list[str]:
    exe = Path(sys.executable).with_name("jaxlin")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "jaxlin.cli"]


@pytest.mark.slow
def test_resume_after_sigkill_continues_the_curves_without_a_step_twice(tiny_data_dir, tmp_path):
    """Killed after a record that no checkpoint holds yet, then resumed (without --tensorboard: the run
    has event files, so it goes on writing them): TensorBoard reads each step once, with the values of
    metrics.jsonl, the resumed steps' included."""
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(tiny_data_dir), "--output-dir", str(out), "--no-progress", "--no-figures",
            "--num-steps", "3000", "--eval-every", "20", "--steps-per-call", "20", "--checkpoint-every", "200",
            "--model", "mlp", "--hidden-sizes", "16"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "first.log"
    with open(log, "w") as output:
        process = subprocess.Popen([*_command(), *args, "--tensorboard"], stdout=output, stderr=subprocess.STDOUT,
                                   env=env)
    try:
        def past_a_checkpoint() -> bool:
            directory = out / "checkpoints"
            steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()] if directory.is_dir() else []
            records = read_records(out) if (out / "metrics.jsonl").exists() else []
            return any(s > 0 for s in steps) and records[-1]["step"] > max(steps) if records else False

        deadline = time.monotonic() + 120
        while not past_a_checkpoint():
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
        assert process.wait(60) == -signal.SIGKILL
    finally:
        process.kill()
    killed_records = read_records(out)
    kept = max(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert killed_records[-1]["step"] > kept  # records after the checkpoint: the resume drops them
    resumed = subprocess.run([*_command(), *args[:args.index("--num-steps")], "--num-steps", "600", "--resume"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "Writing TensorBoard event files" in resumed.stdout
    records = read_records(out)
    scalars = read_scalars(out / "tensorboard")
    assert [step for step, _ in scalars["accuracy/test"]] == list(range(0, 601, 20))
    assert_close_series(scalars["accuracy/test"], [(r["step"], r["test_accuracy"]) for r in records])
    assert len(list((out / "tensorboard").iterdir())) == 1  # the earlier session's file was rewritten


def test_profile_writes_a_trace_of_the_default_window(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data-dir", str(tiny_data_dir), "--output-dir", str(out), "--num-steps", "100",
                 "--eval-every", "20", "--profile", *TINY])
    printed = capsys.readouterr().out
    assert code == 0
    traces = list((out / "profile").glob("plugins/profile/*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert list(traces[0].parent.glob("perfetto_trace.json.gz"))
    # The three chunks after the first: steps 20 to 80.
    assert f"Profile of steps 20 to 80 (3 chunks) in {traces[0].parent}" in printed


def test_profile_steps_cover_whole_chunks_and_a_window_outside_the_run_is_a_note(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(tiny_data_dir), "--output-dir", str(out), "--num-steps", "60",
                 "--eval-every", "20", "--profile", "25:30", *TINY]) == 0
    assert "Profile of steps 20 to 40 (1 chunk) in" in capsys.readouterr().out
    other = tmp_path / "other"
    assert main(["train", "--data-dir", str(tiny_data_dir), "--output-dir", str(other), "--num-steps", "60",
                 "--eval-every", "20", "--profile", "100:200", *TINY]) == 0
    assert "no chunk of steps 100 to 200; no profile written" in capsys.readouterr().out
    assert not (other / "profile").exists()


@pytest.mark.parametrize("value, words", [("5:2", "START must be less than STOP"), ("x", "expected START:STOP"),
                                          ("-1:4", "expected START:STOP")])
def test_bad_profile_value_is_one_line(tmp_path, capsys, value, words):
    assert main(["train", "--output-dir", str(tmp_path / "run"), f"--profile={value}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxlin: error: --profile:") and words in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_tensorboard_without_its_package_is_one_line(tiny_data_dir, tmp_path):
    code = ("import sys; sys.modules['tensorboardX'] = None\n"
            "from jaxlin.cli.main import main\n"
            f"sys.exit(main(['sweep', '--data-dir', {str(tiny_data_dir)!r}, '--output-dir', "
            f"{str(tmp_path / 'run')!r}, '--tensorboard']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.startswith("jaxlin: error: --tensorboard needs the tensorboardX package")
    assert "pip install 'jaxlin[tensorboard]'" in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_overwrite_removes_event_files_and_traces_but_not_foreign_files(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(tiny_data_dir), "--output-dir", str(out), "--num-steps", "40",
            "--eval-every", "20", *TINY]
    assert main([*args, "--tensorboard", "--profile"]) == 0
    assert (out / "tensorboard").is_dir() and (out / "profile").is_dir()
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "tensorboard").exists() and not (out / "profile").exists()
    assert main([*args, "--overwrite", "--tensorboard"]) == 0
    (out / "tensorboard" / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main([*args, "--overwrite"]) == 2
    assert "holds files jaxlin did not write: tensorboard/notes.txt" in capsys.readouterr().err
    assert (out / "tensorboard" / "notes.txt").read_text() == "mine"


def test_xprof_reads_the_trace(tiny_data_dir, tmp_path, capsys):
    """The trace opens in XProf (TensorBoard's Profile tab) where it is installed (`jaxlin[profile]`)."""
    raw_to_tool_data = pytest.importorskip("xprof.convert.raw_to_tool_data")
    out = tmp_path / "run"
    assert main(["train", "--data-dir", str(tiny_data_dir), "--output-dir", str(out), "--num-steps", "60",
                 "--eval-every", "20", "--profile", *TINY]) == 0
    traces = [str(p) for p in (out / "profile").glob("plugins/profile/*/*.xplane.pb")]
    data, content_type = raw_to_tool_data.xspace_to_tool_data(traces, "framework_op_stats", {})
    table = json.loads(data)
    assert content_type == "application/json" and any(row.get("rows") for row in table)


def test_view_folders_block_only_overwrite_and_only_for_files_jaxlin_did_not_write(tiny_data_dir, tmp_path, capsys):
    """A note in tensorboard/, or what a viewer caches beside a trace (XProf writes .cached_tools.json and
    *.hlo_proto.pb there), does not stop a resume; --overwrite removes a viewer's caches with the trace,
    refuses a user's file, and keeps it."""
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(tiny_data_dir), "--output-dir", str(out), "--eval-every", "20",
            "--no-progress", "--no-figures", "--checkpoint-every", "20"]
    assert main([*args, "--num-steps", "40", "--tensorboard", "--profile"]) == 0
    trace_dir = next((out / "profile").glob("plugins/profile/*/"))
    (trace_dir / ".cached_tools.json").write_text("{}")
    (trace_dir / "jit_update.hlo_proto.pb").write_bytes(b"\x00")
    (out / "tensorboard" / "notes.txt").write_text("mine")
    assert main([*args, "--num-steps", "60", "--resume"]) == 0
    (out / "tensorboard" / "notes.txt").unlink()
    assert main([*args, "--num-steps", "40", "--overwrite"]) == 0  # the viewer's caches went with the trace
    assert not (out / "profile").exists() and not (out / "tensorboard").exists()
    (out / "tensorboard").write_text("my own file, not a folder")
    capsys.readouterr()
    assert main([*args, "--num-steps", "40", "--overwrite"]) == 2
    assert "holds files jaxlin did not write: tensorboard" in capsys.readouterr().err
    assert (out / "tensorboard").read_text() == "my own file, not a folder"


def test_a_profiled_run_records_its_trace_and_compare_says_so(tiny_data_dir, tmp_path, capsys):
    plain, profiled = tmp_path / "plain", tmp_path / "profiled"
    for out, extra in ((plain, []), (profiled, ["--profile"])):
        assert main(["train", "--data-dir", str(tiny_data_dir), "--output-dir", str(out), "--num-steps", "100",
                     "--eval-every", "20", *TINY, *extra]) == 0
    metrics = json.loads((profiled / "metrics.json").read_text())
    assert metrics["profile"]["first_step"] == 20 and metrics["profile"]["last_step"] == 80
    assert Path(metrics["profile"]["trace"]).is_dir()
    # What tracing took from the run (the waits, writing the trace out) is its own phase, not training.
    assert metrics["timings"]["profile_seconds"] == metrics["timings"]["breakdown"]["profile_seconds"] > 0
    assert "profile" not in json.loads((plain / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["compare", str(plain), str(profiled), "--no-figure"]) == 0
    assert "profiled: profiled (--profile, steps 20 to 80)" in capsys.readouterr().out


def test_a_trace_ended_early_says_which_steps_it_holds(tmp_path):
    """A stop inside the window: the trace holds the chunks dispatched, and its line says where it ended."""
    import jax.numpy as jnp

    from jaxlin.runtime.profiling import ProfileSteps, StepTrace

    lines = []
    trace = StepTrace(tmp_path / "profile", ProfileSteps(0, 100), log=lines.append)
    trace.plan(iter([(0, 20), (20, 20), (40, 20), (60, 20), (80, 20)]), 0, 100)
    state = jnp.zeros(3)
    for start in (0, 20):
        trace.before(start, state)
        state = state + 1
        trace.after(start, state)
    trace.close()  # the loop stopped after two chunks
    assert len(lines) == 1 and "Profile of steps 0 to 40 (2 chunks; the run stopped before step 100) in" \
        in lines[0]
    assert trace.record()["last_step"] == 40


def test_a_run_with_event_files_resumes_without_tensorboardx_and_says_so(tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data-dir", str(tiny_data_dir), "--output-dir", str(out), "--eval-every", "20",
            "--no-progress", "--no-figures", "--checkpoint-every", "20"]
    assert main([*args, "--num-steps", "40", "--tensorboard"]) == 0
    code = ("import sys; sys.modules['tensorboardX'] = None\n"
            "from jaxlin.cli.main import main\n"
            f"sys.exit(main({[*args, '--num-steps', '60', '--resume']!r}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "holds this run's TensorBoard event files, but tensorboardX is not installed" in done.stdout
    assert [r["step"] for r in read_records(out)] == [0, 20, 40, 60]
    assert [step for step, _ in read_scalars(out / "tensorboard")["accuracy/test"]] == [0, 20, 40]


@pytest.mark.parametrize("flag, name", [("--tensorboard", "tensorboard"), ("--profile", "profile")])
def test_a_file_where_the_flag_writes_its_folder_is_refused_before_training(tiny_data_dir, tmp_path, capsys, flag,
                                                                             name):
    out = tmp_path / "run"
    out.mkdir()
    (out / name).write_text("mine")
    assert main(["train", "--data-dir", str(tiny_data_dir), "--output-dir", str(out), "--num-steps", "40", flag,
                 *TINY]) == 2
    err = capsys.readouterr().err
    assert f"{name} is not a folder (it is a file), and {flag} writes into a folder of that name" in err
    assert sorted(p.name for p in out.iterdir()) == [name] and (out / name).read_text() == "mine"
