"""The accelerator check (`python -m bench --accelerator-check`): one command, one JSON file, a status per section.

It is built to run once on a GPU a session is lent; here it runs on the CPU, on two simulated devices so that
its data-parallel section runs for real."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench import accelerator_check as check

ROOT = Path(__file__).resolve().parents[1]


def _run_check(out: Path, data_dir, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The check as a real process, killed with its process group if it runs past `timeout`."""
    env = {**os.environ, "JAXLIN_DATA_DIR": str(data_dir), "JAX_NUM_CPU_DEVICES": "2"}
    process = subprocess.Popen([sys.executable, "-m", "bench", "--accelerator-check", *extra, "--out", str(out)],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.mark.slow
def test_the_quick_check_runs_every_section_on_the_cpu_and_writes_one_file(mnist_dir, tmp_path):
    done = _run_check(tmp_path, mnist_dir, "--quick", "--check-tests", "quick")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cpu-check-quick.json"]
    results = json.loads((tmp_path / "cpu-check-quick.json").read_text())
    sections = results["sections"]
    assert list(sections) == list(check.SECTIONS)
    assert {name: record["status"] for name, record in sections.items()} == dict.fromkeys(check.SECTIONS, "ok")
    for name in check.SECTIONS:
        assert f"accelerator check: {name}: ok in " in done.stderr  # each section's wall time as it goes
    environment = results["environment"]
    assert environment["backend"] == "cpu" and environment["device_count"] == 2
    assert environment["jax"] and environment["python"]
    assert results["quick"] is True and results["finished"] and results["total_seconds"] > 0

    tests = sections["tests"]
    assert tests["passed"] >= 1 and tests["failed"] == 0 and tests["errors"] == 0 and tests["seconds"] > 0
    assert "-k" in tests["command"]

    cases = sections["fused_vs_per_step"]["cases"]
    assert [(c["model"], c["batch_size"], c["num_steps"]) for c in cases] == list(check.QUICK.throughput_cases)
    for case in cases:
        for loop in check.LOOPS:
            assert len(case[loop]["repeats_seconds"]) == check.QUICK.repeats
            assert case[loop]["steps_per_second"] > 0 and case[loop]["compile_seconds"] > 0
        ratio = case["fused"]["steps_per_second"] / case["per-step"]["steps_per_second"]
        assert case["fused_over_per_step"] == pytest.approx(ratio)

    sweep = sections["sweep_precision"]
    assert sweep["members"] == check.QUICK.sweep_members
    for dtype in check.COMPUTE_DTYPES:
        setting = sweep["settings"][dtype]
        assert setting["status"] == "ok" and setting["model_steps_per_second"] > 0
        assert 0 < setting["mean_test_accuracy"] <= 1
    assert sweep["bfloat16_same_bits_as_float32"] is False

    parallel = sections["data_parallel"]
    assert parallel["devices"] == 2 and parallel["params_agree"] is True
    assert parallel["difference_over_largest"] <= check.PARAMS_TOLERANCE
    assert parallel["one_device"]["steps_per_second"] > 0 and parallel["all_devices"]["steps_per_second"] > 0

    determinism = sections["determinism"]
    assert determinism["identical"] is True
    assert [r["model"] for r in determinism["runs"]] == list(check.QUICK.determinism_models)
    assert all(r["same_params"] and r["same_loss_curve"] and r["evaluations"] > 1 for r in determinism["runs"])


def test_a_spent_budget_skips_every_section_and_still_writes_the_file(tiny_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # main sets it only when unset
    status = check.main(str(tiny_data_dir), tmp_path, quick=True, budget_seconds=1e-9, log=lambda line: None)
    assert status == 0
    results = json.loads((tmp_path / "cpu-check-quick.json").read_text())
    for record in results["sections"].values():
        assert record["status"] == "skipped" and record["reason"].startswith("time budget")
    assert results["environment"]["backend"] == "cpu"


def test_a_failing_section_is_recorded_and_the_next_one_still_runs(tmp_path):
    results = {"sections": {name: {"status": "pending"} for name in check.SECTIONS}}
    budget, path, lines = check.Budget(60), tmp_path / "cpu-check.json", []

    def broken():
        raise RuntimeError("the device fell over\nsecond line")

    def disagreeing():
        return {"value": 1.5, "failures": ["params differ"]}

    def not_here():
        raise check.Skipped("one device")

    check.run_section("fused_vs_per_step", broken, results, budget, path, lines.append)
    assert json.loads(path.read_text())["sections"]["fused_vs_per_step"]["reason"] == \
        "RuntimeError: the device fell over"
    check.run_section("data_parallel", disagreeing, results, budget, path, lines.append)
    check.run_section("determinism", not_here, results, budget, path, lines.append)
    check.run_section("sweep_precision", lambda: {"failures": []}, results, budget, path, lines.append)
    check.run_section("tests", lambda: {"failures": [], "skipped": ["cnn: time budget"]}, results, budget, path,
                      lines.append)
    written = json.loads(path.read_text())["sections"]
    assert written["fused_vs_per_step"]["status"] == "failed" and written["fused_vs_per_step"]["traceback"]
    assert written["data_parallel"] == {"status": "failed", "reason": "params differ", "value": 1.5,
                                        "seconds": written["data_parallel"]["seconds"]}
    assert written["determinism"]["status"] == "skipped" and written["determinism"]["reason"] == "one device"
    assert written["sweep_precision"]["status"] == "ok" and written["sweep_precision"]["reason"] is None
    assert (written["tests"]["status"], written["tests"]["reason"]) == ("ok", "skipped cnn: time budget")
    assert "skipped" not in written["tests"]
    assert len(lines) == 5 and lines[0].startswith("fused_vs_per_step: failed in ")


def test_junit_counts_read_pytests_report(tmp_path):
    report = tmp_path / "junit.xml"
    report.write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="5" failures="1" errors="1" skipped="1">'
        '<testcase classname="tests.test_a" name="test_ok"/>'
        '<testcase classname="tests.test_a" name="test_bad"><failure message="assert 1 == 2&#10;more">x</failure>'
        '</testcase><testcase classname="tests.test_b" name="test_err"><error message="boom">y</error></testcase>'
        '</testsuite></testsuites>')
    counts = check.junit_counts(report)
    assert (counts["passed"], counts["failed"], counts["errors"], counts["skipped"]) == (2, 1, 1, 1)
    assert counts["failing"] == ["tests.test_a::test_bad: assert 1 == 2", "tests.test_b::test_err: boom"]


def test_the_test_selections(tmp_path):
    with pytest.raises(check.Skipped, match="--check-tests none"):
        check.run_tests("none", 10, dict(os.environ), print)
    command, missing = check.test_command("gpu", tmp_path / "junit.xml")
    chosen = [part for part in command if part.startswith("tests/")]
    assert sorted(chosen + missing) == sorted(check.GPU_TEST_FILES)
    assert all((ROOT / f).is_file() for f in chosen) and "-k" not in command
    assert check.test_command("quick", tmp_path / "junit.xml")[0][-3:] == list(check.QUICK_TESTS)


@pytest.mark.parametrize("args, message", [
    (["--check-tests", "quick"], "--check-tests and --check-budget go with --accelerator-check"),
    (["--accelerator-check", "--check-budget", "0"], "--check-budget must be a finite number of seconds > 0"),
    (["--accelerator-check", "--check-budget", "inf"], "--check-budget must be a finite number of seconds > 0"),
    (["--accelerator-check", "--check-tests", "all"], "invalid choice: 'all'"),
    (["--accelerator-check", "--only", "train_steady_state"], "its own fixed sections: it takes no --only"),
    (["--accelerator-check", "--cases", "linear:100:10"], "its own fixed sections: it takes no --cases"),
])
def test_bad_check_arguments_are_one_line_and_exit_2(tiny_data_dir, tmp_path, args, message):
    done = subprocess.run([sys.executable, "-m", "bench", *args, "--data-dir", str(tiny_data_dir), "--out",
                           str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr
    assert not (tmp_path / "out").exists()


def test_an_out_that_cannot_be_written_is_refused_before_anything_runs(tiny_data_dir, tmp_path):
    """Found by a review: it failed with a traceback after the tests section had spent its time."""
    a_file = tmp_path / "a-file"
    a_file.write_text("mine\n")
    done = subprocess.run([sys.executable, "-m", "bench", "--accelerator-check", "--quick", "--data-dir",
                           str(tiny_data_dir), "--out", str(a_file)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and f"--out {a_file}: File exists" in done.stderr.splitlines()[-1]
    assert a_file.read_text() == "mine\n"
