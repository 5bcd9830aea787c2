"""Checkpoints you can trust: `--resume` never deletes one and never trains on a damaged one.

Every test runs `jaxlin train` as a real process on real checkpoint files, then damages,
locks, edits or starves them as a user's machine would, and checks three things: what the
user is told (one line, no traceback), what is left on disk (nothing removed; damaged
checkpoints set aside), and the params (bit for bit those of a run that was never touched).
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxlin.runs.checkpoints import record_digest
from jaxlin.runs.rundir import CHECKPOINT_DIR, SET_ASIDE_DIR

pytestmark = pytest.mark.slow
# A checkpoint at every evaluation (the default is by wall time: every 5 minutes).
STEPS = ["--num-steps", "30", "--eval-every", "10", "--checkpoint-every", "10", "--batch-size", "50"]


def _command() -> list[str]:
    exe = Path(sys.executable).with_name("jaxlin")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "jaxlin.cli"]


def jaxlin(data_dir: Path, *args: str, prefix: tuple[str, ...] = (), timeout: float = 300):
    env = {**os.environ, "JAXLIN_DATA_DIR": str(data_dir)}
    return subprocess.run([*prefix, *_command(), *args, "--no-progress"], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def train(data_dir: Path, out: Path, *args: str, **kwargs):
    return jaxlin(data_dir, "train", "--output-dir", str(out), "--no-figures", *args, **kwargs)


def params(out: Path) -> dict:
    with np.load(out / "params.npz") as archive:
        return {name: archive[name] for name in archive.files if name.startswith("layers/")}


def assert_same_params(a: Path, b: Path) -> None:
    x, y = params(a), params(b)
    assert x.keys() == y.keys()
    for name in x:
        np.testing.assert_array_equal(x[name], y[name], err_msg=name)


def steps_in(out: Path) -> list[str]:
    return sorted(p.name for p in (out / CHECKPOINT_DIR).iterdir())


def one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("jaxlin: error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def flip_bytes(path: Path, count: int = 16) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(max(0, middle - count // 2), min(len(data), middle + count // 2 + 1)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def record_file(checkpoint: Path) -> Path:
    return checkpoint / "record" / "metadata"


@pytest.fixture(scope="module")
def finished(tiny_data_dir, tmp_path_factory) -> Path:
    """A run stopped at step 30 (checkpoints 10, 20 and 30), to copy and damage."""
    out = tmp_path_factory.mktemp("finished") / "run"
    done = train(tiny_data_dir, out, *STEPS)
    assert done.returncode == 0, done.stderr
    assert steps_in(out) == ["10", "20", "30"]
    return out


@pytest.fixture(scope="module")
def reference(tiny_data_dir, tmp_path_factory) -> Path:
    """The same run trained to step 40 in one go, without checkpoints."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = train(tiny_data_dir, out, "--num-steps", "40", "--eval-every", "10", "--batch-size", "50",
                 "--checkpoint-every", "0")
    assert done.returncode == 0, done.stderr
    return out


def copy_of(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def checkpoint_files(finished: Path) -> list[str]:
    newest = finished / CHECKPOINT_DIR / "30"
    return sorted(str(p.relative_to(newest)) for p in newest.rglob("*") if p.is_file() and p.stat().st_size)


def test_flipped_bytes_in_any_file_of_the_newest_checkpoint_are_never_trained_on(tiny_data_dir, finished, reference,
                                                                                 tmp_path):
    """Every file of checkpoint 30 in turn: the resume either finds it intact (the flip touched nothing
    it reads) or sets it aside and resumes from step 20; either way the params are the untouched
    run's, and no checkpoint is removed."""
    names = checkpoint_files(finished)
    assert any("/d/" in name for name in names) and "record/metadata" in names
    set_aside, outcomes = 0, {}
    for name in names:
        out = copy_of(finished, tmp_path / name.replace("/", "_"))
        flip_bytes(out / CHECKPOINT_DIR / "30" / name)
        done = train(tiny_data_dir, out, "--resume", "--num-steps", "40")
        assert done.returncode == 0, f"{name}: {done.stderr}"
        assert "Traceback" not in done.stderr, name
        assert_same_params(out, reference)
        outcomes[name] = "is damaged" in done.stdout
        if outcomes[name]:
            set_aside += 1
            assert (out / SET_ASIDE_DIR / "30-damaged" / name).is_file(), name
            assert "Resuming" in done.stdout and "from step 20" in done.stdout, name
        # Nothing removed: 10 is dropped only by orbax keeping the latest 3 (20, 30, 40) as asked.
        kept = set(steps_in(out)) | {p.name.split("-")[0] for p in (out / SET_ASIDE_DIR).glob("*")}
        assert {"20", "30", "40"} <= kept, name
    # The record and the file holding the arrays' data are always read: a flip there is always caught.
    # (Flips in files that a restore does not read, or in bytes of them it does not use, change nothing.)
    assert outcomes["record/metadata"] and set_aside >= 2, [n for n, hit in outcomes.items() if hit]


def test_an_edited_record_is_damage_not_another_run(tiny_data_dir, finished, reference, tmp_path):
    """The record says "mlp" (or "adam") but was not written so: set aside, the older checkpoints used,
    and no refusal naming a flag the user never passed."""
    for field, value in (("model", "mlp"), ("optimizer", "adam")):
        out = copy_of(finished, tmp_path / field)
        path = record_file(out / CHECKPOINT_DIR / "30")
        record = json.loads(path.read_text())
        record["config"][field] = value
        path.write_text(json.dumps(record))
        done = train(tiny_data_dir, out, "--resume", "--num-steps", "40")
        assert done.returncode == 0, done.stderr
        assert "checkpoint 30 is damaged" in done.stdout and "changed after it was written" in done.stdout
        assert f"set aside as {SET_ASIDE_DIR}/30-damaged" in done.stdout
        assert_same_params(out, reference)


def test_an_unreadable_checkpoint_is_refused_and_nothing_is_moved(tiny_data_dir, finished, tmp_path):
    """Permissions: the run's user cannot read the newest checkpoint's data. Exit 2 naming the file;
    every checkpoint stays where it was; once readable again, the resume uses it."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop the capability that lets root read any file")
    out = copy_of(finished, tmp_path)
    data = sorted((out / CHECKPOINT_DIR / "30").rglob("d/*"))
    for path in data:
        path.chmod(0)
    before = steps_in(out)
    # Root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH obeys permission bits like any user.
    drop = ("setpriv", "--bounding-set=-dac_override,-dac_read_search",
            "--inh-caps=-dac_override,-dac_read_search")
    done = train(tiny_data_dir, out, "--resume", "--num-steps", "40", prefix=drop)
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "cannot read it (Permission denied)" in line and "nothing was moved" in line
    assert steps_in(out) == before and not (out / SET_ASIDE_DIR).exists()
    for path in data:
        path.chmod(0o644)
    done = train(tiny_data_dir, out, "--resume", "--num-steps", "40", prefix=drop)
    assert done.returncode == 0, done.stderr
    assert "from step 30" in done.stdout


def test_a_different_run_is_refused_naming_the_setting_and_both_values(tiny_data_dir, finished, tmp_path):
    out = copy_of(finished, tmp_path)
    before = steps_in(out)
    done = train(tiny_data_dir, out, "--resume", "--model", "mlp")
    assert done.returncode == 2
    assert "--model mlp (the checkpoint has linear)" in one_error_line(done.stderr)
    assert steps_in(out) == before and not (out / SET_ASIDE_DIR).exists()


# Runs made from Python with what the command line cannot rebuild (run with the output dir as argv[1]).
TRAIN_FROM_PYTHON = """
import sys
from jaxlin.runs import train_run as run
from jaxlin.config import Config

run.train_and_evaluate(Config(num_steps=20, eval_every=10, batch_size=50, output_dir=sys.argv[1]), progress=False,
                       figures=False)
"""
FROM_PYTHON = {
    # A user's own model: the record names it, and `jaxlin train` builds no such model.
    "model": ("from jaxlin import models\nfrom jaxlin.runs import session\n"
              "session.build_model = lambda config, data=None: "
              "models.get_model('mlp', hidden_sizes=(8,))._replace(name='mine')",
              "a model that `jaxlin train` does not build (mine)"),
    # A user's own optimizer: the record says sgd, the state holds Adam's moments.
    "optimizer": ("import optax\nfrom jaxlin.training import trainer\n"
                  "trainer.make_optimizer = lambda config: optax.adam(1e-3)",
                  "holds a train state of other shapes"),
}


@pytest.mark.parametrize("what", FROM_PYTHON)
def test_what_resume_cannot_rebuild_is_refused_before_anything_is_touched(tiny_data_dir, tmp_path, what):
    """Another run's state, not damage: refused with exit 2, nothing moved."""
    patch, message = FROM_PYTHON[what]
    out = tmp_path / "run"
    env = {**os.environ, "JAXLIN_DATA_DIR": str(tiny_data_dir)}
    made = subprocess.run([sys.executable, "-c", patch + TRAIN_FROM_PYTHON, str(out)], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert made.returncode == 0, made.stderr
    before = steps_in(out)
    done = train(tiny_data_dir, out, "--resume", "--num-steps", "30")
    assert done.returncode == 2, done.stderr
    assert message in one_error_line(done.stderr)
    assert steps_in(out) == before and not (out / SET_ASIDE_DIR).exists()


def test_a_record_without_a_digest_from_an_older_jaxlin_is_used_with_a_note(tiny_data_dir, finished, reference,
                                                                            tmp_path):
    out = copy_of(finished, tmp_path)
    path = record_file(out / CHECKPOINT_DIR / "30")
    record = json.loads(path.read_text())
    del record["digest"], record["model"], record["kind"], record["data"]  # what an older jaxlin wrote
    path.write_text(json.dumps(record))
    done = train(tiny_data_dir, out, "--resume", "--num-steps", "40")
    assert done.returncode == 0, done.stderr
    assert "checkpoint 30 has no digest (written by an older jaxlin)" in done.stdout
    assert "from step 30" in done.stdout
    assert_same_params(out, reference)


def test_a_record_digest_covers_everything_but_itself():
    record = {"config": {"model": "linear"}, "progress": {"loss_sum": 1.5}}
    digest = record_digest(record)
    assert record_digest({**record, "digest": {"record": "x"}}) == digest
    assert record_digest({**record, "progress": {"loss_sum": 1.5000001}}) != digest


@pytest.fixture
def small_disk(tmp_path):
    """A 200 KiB tmpfs: room for a checkpoint or two of the linear model, then a full disk."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_while_checkpointing_is_one_line_and_resumes_to_the_same_bits(tiny_data_dir, small_disk,
                                                                                 tmp_path):
    out = small_disk / "run"
    args = ["--num-steps", "200", "--eval-every", "20", "--checkpoint-every", "20", "--batch-size", "50"]
    done = train(tiny_data_dir, out, *args)
    assert done.returncode == 2, done.stderr
    line = one_error_line(done.stderr)
    assert "No space left on device" in line and "the last good checkpoint is step" in line
    assert f"resume with: jaxlin train --resume --output-dir {out}" in line
    assert len(done.stderr.splitlines()) <= 3, done.stderr  # no orbax or tensorstore log lines
    good = int(line.split("the last good checkpoint is step ")[1].split()[0])
    assert str(good) in steps_in(out)
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)
    resumed = train(tiny_data_dir, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"from step {good} " in resumed.stdout
    whole = tmp_path / "whole"
    assert train(tiny_data_dir, whole, *args).returncode == 0
    assert_same_params(out, whole)


def test_a_directory_that_vanishes_mid_run_is_one_line(tiny_data_dir, tmp_path):
    out, moved = tmp_path / "run", tmp_path / "moved"
    env = {**os.environ, "JAXLIN_DATA_DIR": str(tiny_data_dir)}
    process = subprocess.Popen([*_command(), "train", "--output-dir", str(out), "--no-progress", "--no-figures",
                                "--num-steps", str(10**7), "--eval-every", "5", "--checkpoint-every", "5",
                                "--batch-size", "50"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not ((out / CHECKPOINT_DIR).is_dir() and len(steps_in(out)) >= 2):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    out.rename(moved)
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == 2, stderr
    line = one_error_line(stderr)
    assert f"output dir {out} was moved or removed while the run was going" in line
    assert any(p.name.isdigit() for p in (moved / CHECKPOINT_DIR).iterdir())
    newest = max(int(name) for name in steps_in(moved) if name.isdigit())
    done = train(tiny_data_dir, moved, "--resume", "--num-steps", str(newest + 10))
    assert done.returncode == 0, done.stderr


def test_a_directory_made_read_only_mid_run_is_one_line(tiny_data_dir, tmp_path):
    """A read-only bind mount laid over the output directory while the run goes on: every file the run
    opens from then on is on a read-only file system."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("bind mounts need root")
    out = tmp_path / "run"
    env = {**os.environ, "JAXLIN_DATA_DIR": str(tiny_data_dir)}
    process = subprocess.Popen([*_command(), "train", "--output-dir", str(out), "--no-progress", "--no-figures",
                                "--num-steps", str(10**7), "--eval-every", "5", "--checkpoint-every", "5",
                                "--batch-size", "50"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mounted = False
    try:
        deadline = time.monotonic() + 240
        while not ((out / CHECKPOINT_DIR).is_dir() and len(steps_in(out)) >= 2):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.05)
        bind = subprocess.run(["mount", "--bind", "-o", "ro", str(out), str(out)], capture_output=True, text=True,
                              check=False)
        if bind.returncode != 0:
            pytest.skip(f"cannot bind-mount here: {bind.stderr.strip()}")
        mounted = True
        subprocess.run(["mount", "-o", "remount,ro,bind", str(out)], check=True)
        _, stderr = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
        if mounted:
            subprocess.run(["umount", "-l", str(out)], check=False)
    assert process.returncode == 2, stderr
    line = one_error_line(stderr)
    assert "Read-only file system" in line and "the last good checkpoint is step" in line
    good = line.split("the last good checkpoint is step ")[1].split()[0]
    assert good in steps_in(out)


SWEEP = ["--learning-rates", "0.1,0.5", "--num-steps", "30", "--eval-every", "10", "--checkpoint-every", "10",
         "--batch-size", "50"]


def test_a_damaged_sweep_checkpoint_is_set_aside_and_the_sweep_ends_as_untouched(tiny_data_dir, tmp_path):
    whole, out = tmp_path / "whole", tmp_path / "run"
    for directory in (whole, out):
        done = jaxlin(tiny_data_dir, "sweep", "--output-dir", str(directory), *SWEEP)
        assert done.returncode == 0, done.stderr
    (out / "sweep.json").unlink()  # as if stopped at step 30
    for path in (out / CHECKPOINT_DIR / "30").rglob("d/*"):
        flip_bytes(path)
    done = jaxlin(tiny_data_dir, "sweep", "--resume", "--output-dir", str(out))
    assert done.returncode == 0, done.stderr
    assert "checkpoint 30 is damaged and was not used" in done.stdout
    assert (out / SET_ASIDE_DIR / "30-damaged").is_dir() and "from step 20" in done.stdout
    a, b = (json.loads((d / "sweep.json").read_text()) for d in (whole, out))
    assert [m["validation_curve"] for m in a["members"]] == [m["validation_curve"] for m in b["members"]]
    assert_same_params(whole / "best", out / "best")


def test_a_record_whose_digest_was_removed_is_damage_not_an_older_record(tiny_data_dir, finished, reference, tmp_path):
    """Passing a changed checkpoint off as an older jaxlin's (its digest emptied, removed or renamed) does
    not get its state used unverified."""
    edits = {"emptied": lambda r: r["digest"].pop("state"), "null": lambda r: r.update(digest=None),
             "renamed": lambda r: r.update(digesu=r.pop("digest")), "removed": lambda r: r.pop("digest")}
    for name, edit in edits.items():
        out = copy_of(finished, tmp_path / name)
        path = record_file(out / CHECKPOINT_DIR / "30")
        record = json.loads(path.read_text())
        edit(record)
        path.write_text(json.dumps(record))
        for data in (out / CHECKPOINT_DIR / "30").rglob("d/*"):
            flip_bytes(data)
        done = train(tiny_data_dir, out, "--resume", "--num-steps", "40")
        assert done.returncode == 0, done.stderr
        assert "checkpoint 30 is damaged" in done.stdout and "no digest" not in done.stdout, name
        assert_same_params(out, reference)


def test_a_damaged_checkpoint_that_cannot_be_set_aside_is_refused_before_training(tiny_data_dir, finished, tmp_path):
    out = copy_of(finished, tmp_path)
    (out / SET_ASIDE_DIR).write_text("in the way")
    for data in (out / CHECKPOINT_DIR / "30").rglob("d/*"):
        flip_bytes(data)
    done = train(tiny_data_dir, out, "--resume", "--num-steps", "40")
    assert done.returncode == 2, done.stderr
    assert "checkpoint 30 in" in one_error_line(done.stderr) and "could not be set aside" in done.stderr
    assert steps_in(out) == ["10", "20", "30"] and "Resuming" not in done.stdout


def test_overwrite_leaves_nothing_of_the_other_command(tiny_data_dir, tmp_path):
    out = tmp_path / "run"
    done = jaxlin(tiny_data_dir, "sweep", "--output-dir", str(out), *SWEEP)
    assert done.returncode == 0, done.stderr
    done = train(tiny_data_dir, out, "--overwrite", *STEPS)
    assert done.returncode == 0, done.stderr
    assert not any((out / name).exists() for name in ("sweep.json", "sweep.png", "best"))
    done = jaxlin(tiny_data_dir, "sweep", "--overwrite", "--output-dir", str(out), *SWEEP)
    assert done.returncode == 0, done.stderr
    assert not (out / "params.npz").exists() and not (out / "metrics.json").exists()


def test_the_abandoned_reads_of_a_failed_restore_print_nothing(caplog):
    """What tensorstore's reads of a damaged checkpoint leave behind once the failure was reported: an
    asyncio future whose error nobody retrieves, a callback into a closed event loop."""
    import asyncio
    import gc

    from jaxlin.runs.checkpoint_logs import quiet_abandoned_reads

    quiet_abandoned_reads()
    loop = asyncio.new_event_loop()
    future = loop.create_future()
    future.set_exception(ValueError("DATA_LOSS: Error reading step/.zarray"))
    del future
    gc.collect()
    loop.close()
    unraisable = []
    previous, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        quiet_abandoned_reads()  # chains to the hook in place
        sys.unraisablehook(type("U", (), {"exc_value": RuntimeError("Event loop is closed")})())
        sys.unraisablehook(type("U", (), {"exc_value": RuntimeError("something else")})())
    finally:
        sys.unraisablehook = previous
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert [str(u.exc_value) for u in unraisable] == ["something else"]
