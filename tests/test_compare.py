"""`jaxlin compare`: real tiny runs (train and sweep, through the real entry point) put side by side."""

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from jaxlin.cli.main import main
from jaxlin.runs.compare import unique_labels

TINY = ["--num-steps", "20", "--eval-every", "10", "--batch-size", "50", "--no-progress"]


def train(data_dir, out, *extra) -> None:
    assert main(["train", "--data-dir", str(data_dir), "--output-dir", str(out), *TINY, "--no-figures", *extra]) == 0


@pytest.fixture(scope="module")
def runs(tiny_data_dir, tmp_path_factory) -> dict:
    """Two finished runs that differ in their learning rate only, and a sweep."""
    root = tmp_path_factory.mktemp("runs")
    train(tiny_data_dir, root / "a", "--checkpoint-every", "10")
    train(tiny_data_dir, root / "b", "--checkpoint-every", "10", "--learning-rate", "0.1")
    assert main(["sweep", "--data-dir", str(tiny_data_dir), "--output-dir", str(root / "sweep"), *TINY,
                 "--learning-rates", "0.1,0.5", "--checkpoint-every", "0"]) == 0
    return {"a": root / "a", "b": root / "b", "sweep": root / "sweep"}


def compare(capsys, *args) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["compare", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def test_two_runs_are_drawn_and_tabulated(runs, tmp_path, capsys):
    figure = tmp_path / "two.png"
    code, out, err = compare(capsys, runs["a"], runs["b"], "--output", figure)
    assert code == 0, err
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.width > 0 and image.height > 0
    header, row_a, row_b, *notes = out.splitlines()
    assert header.split()[:2] == ["run", "accuracy"] and header.split()[-1] == "learning_rate"
    assert row_a.split()[0] == "a" and row_a.split()[-1] == "0.5"
    assert row_b.split()[0] == "b" and row_b.split()[-1] == "0.1"
    assert f"{metrics(runs['a'])['final_test_accuracy']:.2%} (test)" in row_a
    for equal in ("batch_size", "optimizer", "num_steps", "model", "output_dir"):
        assert equal not in out
    assert "(all other settings equal" in out and f"Wrote {figure}" in notes[-1]
    assert not list(tmp_path.glob(".two.png.*"))  # written through a temporary file, renamed


def test_json_numbers_are_the_runs_own(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = compare(capsys, runs["a"], runs["b"], "--json", "--no-figure")
    assert code == 0, err
    summary = json.loads(out)  # nothing but JSON on stdout
    assert summary["differing_settings"] == ["learning_rate"] and summary["figure"] is None
    for row, name in zip(summary["runs"], ("a", "b")):
        saved = metrics(runs[name])
        assert row["label"] == name and row["finished"] and row["accuracy_kind"] == "test"
        assert row["final_accuracy"] == saved["final_test_accuracy"]
        assert row["final_train_loss"] == saved["evaluations"][-1]["train_loss"]
        assert row["steps"] == saved["num_steps"] == 20
        assert row["wall_seconds"] == saved["timings"]["total_seconds"]
        assert row["steps_per_second"] == saved["timings"]["steps_per_second"]
        assert row["settings"] == {"learning_rate": saved["config"]["learning_rate"]}
    assert not (tmp_path / "compare.png").exists()
    code, out, err = compare(capsys, runs["a"], runs["b"], "--json")  # still draws, by default in the cwd
    assert code == 0 and json.loads(out)["figure"] == "compare.png" and (tmp_path / "compare.png").stat().st_size


def test_unfinished_runs_settings_come_from_the_checkpoint(runs, tmp_path, capsys):
    stopped = tmp_path / "elsewhere" / "b"  # named as the run it copies: the labels must tell them apart
    shutil.copytree(runs["b"], stopped)
    (stopped / "metrics.json").unlink()
    (stopped / "params.npz").unlink()
    code, out, err = compare(capsys, runs["b"], stopped, "--json", "--no-figure")
    assert code == 0, err
    finished, unfinished = json.loads(out)["runs"]
    assert (finished["label"], unfinished["label"]) == (f"{runs['b'].parent.name}/b", "elsewhere/b")
    assert not unfinished["finished"] and unfinished["settings"] == {}  # read from checkpoints/: all equal
    assert unfinished["steps"] == 20 and unfinished["wall_seconds"] == metrics(runs["b"])["evaluations"][-1][
        "elapsed_seconds"]
    assert json.loads(out)["differing_settings"] == []

    shutil.rmtree(stopped / "checkpoints")  # now nothing says how it was run: its curves still show
    code, out, err = compare(capsys, runs["a"], stopped, "--output", tmp_path / "c.png")
    assert code == 0, err
    assert "b: settings unknown" in out and "(settings cannot be compared" in out
    assert (tmp_path / "c.png").stat().st_size


def test_a_sweeps_best_member_is_a_run_of_validation_accuracy(runs, tmp_path, capsys):
    best = runs["sweep"] / "best"
    code, out, err = compare(capsys, runs["a"], best, "--json", "--output", tmp_path / "s.png")
    assert code == 0, err
    row = json.loads(out)["runs"][1]
    saved = metrics(best)
    assert row["label"] == "sweep/best" and row["accuracy_kind"] == "validation"
    assert row["final_accuracy"] == saved["final_validation_accuracy"]
    assert row["final_test_accuracy"] == saved["final_test_accuracy"]
    code, out, err = compare(capsys, best, "--no-figure")  # one run is allowed
    assert code == 0 and "(validation)" in out and "(one run: no settings to compare)" in out


def _not_a_run(tmp_path, runs):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    return [tmp_path / "notes"]


def _missing(tmp_path, runs):
    return [runs["a"], tmp_path / "nowhere"]


def _a_file(tmp_path, runs):
    return [runs["a"] / "metrics.json"]


def _sweep_dir(tmp_path, runs):
    return [runs["a"], runs["sweep"]]


def _duplicate(tmp_path, runs):
    return [runs["a"], runs["b"], Path(str(runs["a"]) + "/")]


def _records(text):
    def make(tmp_path, runs):
        run = tmp_path / "run"
        run.mkdir()
        (run / "metrics.jsonl").write_text(text)
        return [runs["a"], run]
    return make


def _output_is_a_directory(tmp_path, runs):
    return [runs["a"], "--output", str(tmp_path)]


def _output_is_a_pipe(tmp_path, runs):
    """Not a regular file (as /dev/null is not): renaming a new file over it would replace it."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    return [runs["a"], "--output", str(pipe)]


def _output_is_stdout(tmp_path, runs):
    return [runs["a"], "--output", "-"]


@pytest.mark.parametrize("given, says", [
    (_not_a_run, "is not a jaxlin run directory"),
    (_missing, "no such run directory"),
    (_a_file, "is a file, not a run directory"),
    (_sweep_dir, "is a sweep's directory"),
    (_duplicate, "is given twice"),
    (_records(""), "metrics.jsonl is empty"),
    (_records('{"step": 0, "test_accuracy": 0.1, "train_loss": null, "elapsed_seconds": 1.0}\nnot json\n'),
     "line 2 is not a jaxlin evaluation record"),
    (_records('{"step": 0, "validation_accuracy": [0.1, 0.2], "train_loss": [null, null], "elapsed_seconds": 1}\n'),
     "holds a sweep that has not finished"),
    (_output_is_a_directory, "is a directory"),
    (_output_is_a_pipe, "is not a regular file"),
    (_output_is_stdout, "the figure is a PNG file; give its path"),
], ids=["not-a-run", "missing", "file", "sweep", "duplicate", "empty", "corrupt", "running-sweep", "output-dir",
        "output-pipe", "output-stdout"])
def test_what_is_not_a_run_is_refused_in_one_line(runs, tmp_path, capsys, monkeypatch, given, says):
    arguments = given(tmp_path, runs)
    monkeypatch.chdir(tmp_path)
    code, out, err = compare(capsys, *arguments)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("jaxlin: error: ") and says in err, err
    assert not (tmp_path / "compare.png").exists()
    if given is _sweep_dir:
        assert str(runs["sweep"] / "best") in err and "sweep.png" in err
    if given is _output_is_a_pipe:
        assert (tmp_path / "pipe").is_fifo()


def test_output_through_a_symlink_writes_the_file_it_points_to(runs, tmp_path, capsys):
    target = tmp_path / "figures" / "mine.png"
    target.parent.mkdir()
    target.write_bytes(b"old")
    link = tmp_path / "link.png"
    link.symlink_to(target)
    code, out, err = compare(capsys, runs["a"], runs["b"], "--output", link)
    assert code == 0, err
    assert link.is_symlink() and target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_many_runs_are_told_apart(runs, tmp_path, capsys):
    """Twelve runs: twelve colours (tab20 past matplotlib's ten), one per run."""
    from jaxlin.runs.compare import plot_runs, read_runs

    copies = []
    for i in range(12):
        copies.append(tmp_path / f"r{i}")
        shutil.copytree(runs["a"], copies[-1])
    figure = plot_runs(read_runs([str(c) for c in copies]), tmp_path / "many.png")
    colours = [line.get_color() for line in figure.axes[0].get_lines()]
    assert len(colours) == 12 and len({tuple(c) if not isinstance(c, str) else c for c in colours}) == 12


def test_labels_are_short_and_unique(tmp_path):
    paths = [tmp_path / "x" / "run", tmp_path / "y" / "run", tmp_path / "x" / "other"]
    assert unique_labels(paths) == ["x/run", "y/run", "other"]
