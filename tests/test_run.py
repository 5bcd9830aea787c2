"""The train job in-process: evaluation steps, resumed records, what metrics.json records."""

import json

from jaxlin.config import Config
from jaxlin.runs.train_run import train_and_evaluate


def _config(tmp_path, data_dir, **changes) -> Config:
    return Config(data_dir=str(data_dir), output_dir=str(tmp_path / "run"), num_steps=40, eval_every=20,
                  batch_size=50).replace(**changes)


def test_no_evaluation_steps_still_gives_final_metrics(tiny_data_dir, tmp_path):
    lines = []
    metrics = train_and_evaluate(_config(tmp_path, tiny_data_dir), progress=False, log=lines.append, eval_steps=[])
    assert metrics["evaluations"] == [] and metrics["final_test_accuracy"] > 0.9
    assert not any("before training" in line for line in lines)
    assert any(line.startswith("Accuracy on test-set:") and "(after 40 steps)" in line for line in lines)


def test_evaluations_that_do_not_start_at_zero_are_not_called_before_training(tiny_data_dir, tmp_path):
    lines = []
    metrics = train_and_evaluate(_config(tmp_path, tiny_data_dir), progress=False, log=lines.append,
                                 eval_steps=[10, 40])
    assert [e["step"] for e in metrics["evaluations"]] == [10, 40]
    assert not any("before training" in line for line in lines)


def test_a_resume_measures_an_evaluation_whose_record_was_lost(tiny_data_dir, tmp_path):
    config = _config(tmp_path, tiny_data_dir, checkpoint_every=20)
    first = train_and_evaluate(config, progress=False, log=lambda line: None)
    records_path = tmp_path / "run" / "metrics.jsonl"
    # As if killed after the checkpoint at step 40 was written but before its record was.
    lines = records_path.read_text().splitlines()
    records_path.write_text("\n".join(lines[:-1]) + '\n{"step": 40, "test_acc')
    (tmp_path / "run" / "metrics.json").unlink()
    again = train_and_evaluate(config, progress=False, log=lambda line: None, mode="resume", explicit=set())
    assert again["resumed_from_step"] == 40
    strip = lambda records: [{k: v for k, v in r.items() if k != "elapsed_seconds"} for r in records]
    assert strip(again["evaluations"]) == strip(first["evaluations"])
    assert [json.loads(line)["step"] for line in records_path.read_text().splitlines()] == [0, 20, 40]


def test_hand_edited_records_are_dropped_on_resume(tiny_data_dir, tmp_path):
    config = _config(tmp_path, tiny_data_dir)
    train_and_evaluate(config, progress=False, log=lambda line: None)
    records_path = tmp_path / "run" / "metrics.jsonl"
    good = records_path.read_bytes()
    records_path.write_bytes(good + b'{"step": 5}\n\xff\xfe\x00garbage\n{"step": 10, "test_accuracy": NaN, '
                             b'"train_loss": 1.0, "elapsed_seconds": 1}\n' + good.splitlines(keepends=True)[0]
                             + b'{"step": true, "test_accuracy": 1, "train_loss": 1, "elapsed_seconds": 1}\n')
    (tmp_path / "run" / "metrics.json").unlink()
    again = train_and_evaluate(config.replace(num_steps=60), progress=False, log=lambda line: None, mode="resume",
                               explicit={"num_steps"})
    assert [e["step"] for e in again["evaluations"]] == [0, 20, 40, 60]
    assert [json.loads(line)["step"] for line in records_path.read_text().splitlines()] == [0, 20, 40, 60]


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tiny_data_dir, tmp_path):
    config = _config(tmp_path, tiny_data_dir)
    first = train_and_evaluate(config, progress=False, log=lambda line: None)
    checkpoints = tmp_path / "run" / "checkpoints"
    (checkpoints / "50").mkdir()  # newer than the last one, and empty
    lines = []
    again = train_and_evaluate(config.replace(num_steps=60), progress=False, log=lines.append, mode="resume",
                               explicit={"num_steps"})
    assert any(line.startswith("jaxlin: checkpoint 50 is damaged and was not used") for line in lines)
    assert again["resumed_from_step"] == 40 and not (checkpoints / "50").exists()
    assert (tmp_path / "run" / "checkpoints-set-aside" / "50-damaged").is_dir()  # set aside, never deleted
    assert again["evaluations"][:3] == first["evaluations"]


def test_the_resume_command_is_quoted_for_the_shell():
    from pathlib import Path

    from jaxlin.runs.train_run import resume_command

    assert resume_command(Path("my run")) == "jaxlin train --resume --output-dir 'my run'"
    assert resume_command(Path("plain")) == "jaxlin train --resume --output-dir plain"


def test_a_dry_run_checks_the_output_directory(tiny_data_dir, tmp_path):
    import pytest

    from jaxlin.runs.rundir import RunDirError

    config = _config(tmp_path, tiny_data_dir)
    train_and_evaluate(config, progress=False, log=lambda line: None)
    with pytest.raises(RunDirError, match="already holds a jaxlin train run .*continue it with jaxlin train --resume"):
        train_and_evaluate(config, dry_run=True, log=lambda line: None)
    assert train_and_evaluate(config, dry_run=True, log=lambda line: None, mode="overwrite") is None


def test_a_checkpoint_of_another_run_kind_is_refused_not_adopted(tmp_path):
    """The session stamps each record with its kind: a run of another kind (a user's) is never
    resumed as a train run or a sweep, and older records are told apart by their grid."""
    import pytest

    from jaxlin.config import ConfigError
    from jaxlin.runs.session import _record_check, record_kind
    from jaxlin.runs.sweep_run import SweepRun
    from jaxlin.runs.train_run import TrainRun
    from jaxlin.training.sweep import Grid

    with pytest.raises(ConfigError, match="holds a jaxlin evalonly run, not a train run; continue it with "
                                          "jaxlin evalonly --resume"):
        _record_check(TrainRun(), tmp_path)(10, {"kind": "evalonly", "config": {}, "progress": {}})
    with pytest.raises(ConfigError, match="holds a jaxlin train run, not a sweep run"):
        _record_check(SweepRun(Grid()), tmp_path)(10, {"config": {}, "progress": {}})
    assert record_kind({"grid": {}, "config": {}}) == "sweep" and record_kind({"config": {}}) == "train"


def test_overwrite_removes_what_the_run_kinds_layout_writes(tmp_path):
    from jaxlin.runs.rundir import RECORD_FIELDS, RECORDS_FILE, Layout, RunDir

    (tmp_path / "summary.json").write_text("{}")
    (tmp_path / "logs").mkdir()  # a multi-process run's runtime logs go with it
    (tmp_path / "logs" / "runtime-process-1-of-2.log").write_text("F0101 gone")
    (tmp_path / "notes.txt").write_text("mine")
    RunDir(tmp_path, Layout(("summary.json", RECORDS_FILE), "summary.json", RECORD_FIELDS)).remove_run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_checkpoints_folder_of_other_files_is_refused_never_deleted(tiny_data_dir, tmp_path, capsys):
    """Only what jaxlin writes makes a run: `--overwrite` refuses a folder whose checkpoints/ holds other
    files (and leaves them), while a jaxlin run's own checkpoints are still replaced."""
    from jaxlin.cli.main import main

    out = tmp_path / "run"
    (out / "checkpoints" / "7").mkdir(parents=True)
    (out / "checkpoints" / "keep.txt").write_text("mine")
    (out / "checkpoints" / "7" / "model.pt").write_text("mine too")
    flags = ["train", "--data-dir", str(tiny_data_dir), "--output-dir", str(out), "--num-steps", "20",
             "--batch-size", "50", "--no-progress", "--no-figures"]
    for mode in ([], ["--overwrite"], ["--resume"]):
        assert main([*flags, *mode]) == 2
        assert capsys.readouterr().err.strip() == (
            f"jaxlin: error: output dir {out} holds files jaxlin did not write: checkpoints/7, checkpoints/keep.txt; "
            f"choose another --output-dir (jaxlin never removes them)")
    assert sorted(p.name for p in out.rglob("*")) == ["7", "checkpoints", "keep.txt", "model.pt"]
    (out / "checkpoints" / "keep.txt").unlink()
    (out / "checkpoints" / "7" / "model.pt").unlink()
    (out / "checkpoints" / "7").rmdir()
    assert main(flags) == 0 and main([*flags, "--overwrite"]) == 0  # jaxlin's own run: replaced
    assert "already holds" not in capsys.readouterr().err
