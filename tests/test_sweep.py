"""`jaxlin sweep`: members agree with `jaxlin train` alone, divergence is contained, selection
never reads the test set, and the job keeps `jaxlin train`'s directory rules."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxlin.cli.main import main
from jaxlin.config import Config
from jaxlin.data.datasets import Datasets, Split
from jaxlin.models import as_model, get_model
from jaxlin.runtime.devices import resolve_placement
from jaxlin.training import sweep as sweep_module
from jaxlin.training.sweep import Grid, SweepTrainer, best_member
from jaxlin.runs.sweep_run import run_sweep
from jaxlin.training.trainer import fit

BASE = Config(num_steps=120, eval_every=40, batch_size=50, steps_per_call=40)
MLP = BASE.replace(model="mlp", hidden_sizes=(16,))


def _train_sweep(config: Config, grid: Grid, data, chunk: int = 40):
    """(trainer, final state) of a sweep, through the same compiled chunks as `jaxlin sweep`."""
    members = grid.members(config)
    trainer = SweepTrainer(config, members, data, get_model(config.model, config.hidden_sizes),
                           resolve_placement())
    state = trainer.init_state()
    while state.step < config.num_steps:
        state, _ = trainer.run_chunk(state, min(chunk, config.num_steps - state.step))
    return trainer, state


def _close(actual, expected, tolerance=1e-5):
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
        scale = max(np.abs(e).max(), 1e-12)
        assert np.abs(np.asarray(a) - np.asarray(e)).max() <= tolerance * scale


@pytest.mark.parametrize("config, grid", [
    (MLP, Grid(learning_rates=(0.05, 0.5), seeds=(0, 3))),  # shared batch order, one wide matmul
    (BASE.replace(learning_rate=1.0), Grid(learning_rates=(0.3, 1.0))),
    (MLP.replace(optimizer="momentum"), Grid(learning_rates=(0.05,), momentums=(0.0, 0.9))),
    (MLP, Grid(seeds=(0, 1), data_seeds=(0, 5))),  # each member its own batch order
])
def test_every_member_ends_with_the_params_jaxlin_train_gives_it_alone(tiny_data, config, grid):
    trainer, state = _train_sweep(config, grid, tiny_data)
    for index, member in enumerate(grid.members(config)):
        alone = fit(member, tiny_data, get_model(member.model, member.hidden_sizes), progress=False)
        _close(trainer.member_params(state, index), alone.params)


def test_a_member_with_a_shared_order_matches_a_plain_train_run_of_its_seed(tiny_data):
    """`data_seed` defaults to the sweep's --seed: member (seed 0) is `jaxlin train --seed 0` itself."""
    trainer, state = _train_sweep(MLP, Grid(seeds=(0, 7)), tiny_data)
    alone = fit(MLP, tiny_data, get_model("mlp", (16,)), progress=False)
    _close(trainer.member_params(state, 0), alone.params)


def test_a_diverging_member_is_frozen_and_the_others_are_untouched(tiny_data):
    calm_trainer, calm = _train_sweep(BASE, Grid(learning_rates=(0.1, 0.5, 0.2)), tiny_data)
    wild_trainer, wild = _train_sweep(BASE, Grid(learning_rates=(0.1, 0.5, 1e38)), tiny_data)
    frozen_at = wild_trainer.frozen_at(wild)
    assert frozen_at[0] == frozen_at[1] == -1 and 1 <= frozen_at[2] <= 5
    assert calm_trainer.frozen_at(calm).tolist() == [-1, -1, -1]
    for index in (0, 1):  # same program shape, independent members: bit for bit
        for a, b in zip(jax.tree.leaves(wild_trainer.member_params(wild, index)),
                        jax.tree.leaves(calm_trainer.member_params(calm, index))):
            np.testing.assert_array_equal(a, b)


def test_a_sweep_is_bitwise_deterministic(tiny_data):
    grid = Grid(learning_rates=(0.1, 0.5), seeds=(0, 1))
    first_trainer, first = _train_sweep(MLP, grid, tiny_data)
    second_trainer, second = _train_sweep(MLP, grid, tiny_data, chunk=30)  # other chunks, same steps
    for index in range(4):
        for a, b in zip(jax.tree.leaves(first_trainer.member_params(first, index)),
                        jax.tree.leaves(second_trainer.member_params(second, index))):
            np.testing.assert_array_equal(a, b)


def test_best_member_reads_validation_accuracy_only_and_skips_diverged_members():
    assert best_member([0.5, 0.9, 0.9, 0.95], [None, None, None, 3]) == 1
    assert best_member([0.5, None], [4, None]) is None


def test_selection_does_not_change_when_the_test_labels_are_scrambled(tiny_data, tmp_path):
    rng = np.random.default_rng(0)
    scrambled = Datasets(tiny_data.train, tiny_data.validation,
                         Split(tiny_data.test.images_uint8, rng.permutation(tiny_data.test.labels)),
                         tiny_data.name, tiny_data.source)
    config = BASE.replace(checkpoint_every=0)
    grid = Grid(learning_rates=(0.01, 0.1, 0.5, 2.0))
    summaries = [run_sweep(config.replace(output_dir=str(tmp_path / name)), grid, progress=False, data=data,
                           log=lambda line: None) for name, data in (("true", tiny_data), ("scrambled", scrambled))]
    assert summaries[0]["best"] == summaries[1]["best"] is not None
    for a, b in zip(summaries[0]["members"], summaries[1]["members"]):
        assert a["validation_curve"] == b["validation_curve"]
    assert summaries[0]["best_test_accuracy"] != summaries[1]["best_test_accuracy"]


def _sweep_cli(*args) -> int:
    return main(["sweep", "--no-progress", *args])


def test_the_sweep_command_writes_its_outputs_and_keeps_the_directory_rules(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    common = ["--data-dir", str(tiny_data_dir), "--output-dir", str(out), "--num-steps", "60", "--eval-every", "20",
              "--batch-size", "50"]
    assert _sweep_cli(*common, "--learning-rates", "0.1,0.5,1e38", "--seeds", "0,1") == 0
    printed = capsys.readouterr().out
    assert "diverged at step" in printed and "Best member" in printed and "model-steps/s" in printed
    assert {p.name for p in out.iterdir()} == {"sweep.json", "sweep.png", "best", "metrics.jsonl", "checkpoints",
                                               ".jaxlin.lock"}
    assert {p.name for p in (out / "best").iterdir()} == {
        "params.npz", "metrics.json", "example_images.png", "misclassified.png", "weights.png",
        "confusion_matrix.png", "learning_curve.png"}
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["num_members"] == 6 and summary["shared_batch_order"]
    assert [m["diverged_at_step"] is not None for m in summary["members"]] == [False] * 4 + [True] * 2
    best = summary["members"][summary["best"]]
    assert best["validation_accuracy"] == max(m["validation_accuracy"] for m in summary["members"][:4])
    assert json.loads((out / "best" / "metrics.json").read_text())["final_test_accuracy"] == best["test_accuracy"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 20, 40, 60] and len(records[-1]["validation_accuracy"]) == 6
    # the same rules as `jaxlin train`: no silent overwrite, --overwrite replaces, bad grids are one line
    assert _sweep_cli(*common, "--learning-rates", "0.1") == 2
    assert "already holds a jaxlin sweep run" in capsys.readouterr().err
    assert _sweep_cli(*common, "--learning-rates", "0.1", "--overwrite") == 0
    assert json.loads((out / "sweep.json").read_text())["num_members"] == 1
    capsys.readouterr()
    assert _sweep_cli(*common, "--overwrite", "--momentums", "0.5") == 2
    assert "takes no momentum" in capsys.readouterr().err
    assert _sweep_cli(*common, "--overwrite", "--learning-rates", "0.1,0.1") == 2
    assert "lists a value twice" in capsys.readouterr().err


def test_train_and_sweep_directories_are_not_mistaken_for_each_other(tiny_data_dir, tmp_path, capsys):
    sweep_dir, train_dir = tmp_path / "sweep", tmp_path / "train"
    common = ["--data-dir", str(tiny_data_dir), "--num-steps", "20", "--eval-every", "10"]
    assert _sweep_cli(*common, "--output-dir", str(sweep_dir), "--learning-rates", "0.1,0.5") == 0
    assert main(["train", *common, "--output-dir", str(train_dir), "--no-progress"]) == 0
    checkpoints = {d: sorted(p.name for p in (d / "checkpoints").iterdir()) for d in (sweep_dir, train_dir)}
    capsys.readouterr()
    assert main(["train", "--resume", "--output-dir", str(sweep_dir), "--no-progress", "--num-steps", "40"]) == 2
    assert "holds a jaxlin sweep" in capsys.readouterr().err
    assert _sweep_cli("--resume", "--output-dir", str(train_dir), "--num-steps", "40") == 2
    assert "holds a jaxlin train run" in capsys.readouterr().err
    # A fresh run into the other command's directory: the advice names the command that continues it.
    assert _sweep_cli(*common, "--output-dir", str(train_dir), "--learning-rates", "0.1") == 2
    assert "holds a jaxlin train run (metrics.json" in capsys.readouterr().err
    assert main(["train", *common, "--output-dir", str(sweep_dir), "--no-progress"]) == 2
    assert f"continue it with jaxlin sweep --resume --output-dir {sweep_dir}" in capsys.readouterr().err
    assert {d: sorted(p.name for p in (d / "checkpoints").iterdir()) for d in checkpoints} == checkpoints


@pytest.mark.parametrize("args, message", [
    (["--loop", "per-step"], "a sweep trains its members in the fused loop only"),
    (["--learning-rate", "0.3", "--learning-rates", "0.1,0.2"], "give --learning-rate or --learning-rates"),
])
def test_sweep_settings_that_would_be_ignored_are_refused(tiny_data_dir, tmp_path, capsys, args, message):
    assert _sweep_cli("--data-dir", str(tiny_data_dir), "--output-dir", str(tmp_path / "s"), *args) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_every_member_diverging_exits_3(tiny_data_dir, tmp_path, capsys):
    assert _sweep_cli("--data-dir", str(tiny_data_dir), "--output-dir", str(tmp_path / "s"), "--num-steps", "20",
                      "--learning-rates", "1e38", "--checkpoint-every", "0") == 3
    assert "every member of the sweep diverged" in capsys.readouterr().err


def test_a_sweep_that_cannot_fit_is_refused_before_training(tiny_data_dir, tmp_path, capsys):
    assert _sweep_cli("--data-dir", str(tiny_data_dir), "--output-dir", str(tmp_path / "s"), "--model", "mlp",
                      "--hidden-sizes", "4096,4096", "--learning-rates", ",".join(str(i / 1000) for i in range(1, 301)),
                      "--seeds", "0,1,2,3", "--dry-run") == 2
    err = capsys.readouterr().err
    assert "a sweep of 1200 members needs about" in err and "GiB" in err and not (tmp_path / "s").exists()
    assert _sweep_cli("--data-dir", str(tiny_data_dir), "--output-dir", str(tmp_path / "s"),
                      "--learning-rates", "0.1,0.5", "--dry-run") == 0
    assert "memory: about" in capsys.readouterr().out and not (tmp_path / "s").exists()


@pytest.mark.slow
def test_a_stopped_sweep_resumes_to_the_same_bits(tiny_data_dir, tmp_path):
    exe = Path(sys.executable).with_name("jaxlin")
    common = ["sweep", "--no-progress", "--data-dir", str(tiny_data_dir), "--learning-rates", "0.1,0.5",
              "--seeds", "0,1", "--model", "mlp", "--hidden-sizes", "16", "--eval-every", "200"]
    whole = tmp_path / "whole"
    assert main([*common, "--output-dir", str(whole), "--num-steps", "4000"]) == 0
    out = tmp_path / "stopped"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([str(exe), *common, "--output-dir", str(out), "--num-steps", "4000"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ((out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= 3):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    assert "Resume with: jaxlin sweep --resume --output-dir" in err and not (out / "sweep.json").exists()
    assert main(["sweep", "--resume", "--no-progress", "--output-dir", str(out)]) == 0
    a, b = (json.loads((d / "sweep.json").read_text()) for d in (whole, out))
    assert [m["validation_curve"] for m in a["members"]] == [m["validation_curve"] for m in b["members"]]
    # Each record's train loss is the mean over its own window only, also the first after the resume.
    assert [r["train_loss"] for r in a["evaluations"]] == [r["train_loss"] for r in b["evaluations"]]
    assert [m["final_train_loss"] for m in a["members"]] == [m["final_train_loss"] for m in b["members"]]
    with np.load(whole / "best" / "params.npz") as x, np.load(out / "best" / "params.npz") as y:
        for name in x.files:
            np.testing.assert_array_equal(x[name], y[name])


@pytest.mark.slow
def test_members_sharded_over_devices_match_one_device(tiny_data_dir, tmp_path):
    """Three members on two simulated devices: padded to four, the padding dropped."""
    exe = Path(sys.executable).with_name("jaxlin")
    common = ["sweep", "--no-progress", "--data-dir", str(tiny_data_dir), "--learning-rates", "0.05,0.1,0.5",
              "--num-steps", "100", "--eval-every", "50", "--checkpoint-every", "0"]
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2"}
    runs = {}
    for devices in ("1", "2"):
        out = tmp_path / devices
        done = subprocess.run([str(exe), *common, "--devices", devices, "--output-dir", str(out)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        runs[devices] = json.loads((out / "sweep.json").read_text())
    assert "2 cpu devices (members sharded)" in runs["2"]["device"] and runs["2"]["num_members"] == 3
    for a, b in zip(runs["1"]["members"], runs["2"]["members"]):
        assert np.allclose(a["validation_curve"], b["validation_curve"], atol=2e-4)
    assert runs["1"]["best"] == runs["2"]["best"]


@pytest.mark.slow
def test_a_sweep_resumes_on_another_device_count_whatever_its_padding(tiny_data_dir, tmp_path):
    """Three members: saved on one device, resumed on two (padded to four), back on one; checkpoints
    hold the real members only, so each placement pads afresh and the run continues the same."""
    exe = Path(sys.executable).with_name("jaxlin")
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "2"}
    common = ["sweep", "--no-progress", "--data-dir", str(tiny_data_dir), "--eval-every", "20"]

    def sweep(*args):
        done = subprocess.run([str(exe), *common, *args], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return done

    out, whole = tmp_path / "moved", tmp_path / "whole"
    sweep("--learning-rates", "0.05,0.1,0.5", "--num-steps", "20", "--output-dir", str(out))
    assert "Resuming" in sweep("--resume", "--num-steps", "40", "--devices", "2", "--output-dir", str(out)).stdout
    sweep("--resume", "--num-steps", "60", "--devices", "1", "--output-dir", str(out))
    sweep("--learning-rates", "0.05,0.1,0.5", "--num-steps", "60", "--output-dir", str(whole))
    moved, unmoved = (json.loads((d / "sweep.json").read_text()) for d in (out, whole))
    assert moved["best"] == unmoved["best"]
    for a, b in zip(moved["members"], unmoved["members"]):
        assert np.allclose(a["validation_curve"], b["validation_curve"], atol=2e-4)


def test_sweep_members_are_the_grid_cross_product():
    members = Grid(learning_rates=(0.1, 0.2), seeds=(3, 4)).members(Config(seed=9))
    assert [(m.learning_rate, m.seed, m.data_seed) for m in members] == [
        (0.1, 3, 9), (0.1, 4, 9), (0.2, 3, 9), (0.2, 4, 9)]
    assert dataclasses.replace(members[0], learning_rate=0.5).learning_rate == 0.5


# --- the wide layout (jaxlin's dense models, a shared batch order) ---------------------------------------------

@pytest.fixture
def wide_from_two_members(monkeypatch):
    """The wide layout for sweeps of any size (it normally starts at `WIDE_MIN_MEMBERS`): small grids test it."""
    monkeypatch.setattr(sweep_module, "WIDE_MIN_MEMBERS", 1)


def test_the_wide_layout_starts_at_its_member_count(tiny_data):
    smallest = sweep_module.WIDE_MIN_MEMBERS
    for count, layout in ((smallest - 1, "vmapped"), (smallest, "wide")):
        grid = Grid(learning_rates=tuple(0.01 * (i + 1) for i in range(count)))
        trainer = SweepTrainer(BASE, grid.members(BASE), tiny_data, get_model("linear"), resolve_placement())
        assert trainer.layout == layout


def _vmapped_sweep(monkeypatch, config: Config, grid: Grid, data):
    """The same sweep forced onto the general (vmapped) path."""
    with monkeypatch.context() as patched:
        patched.setattr(sweep_module, "wide_layout_applies", lambda *args: False)
        return _train_sweep(config, grid, data)


@pytest.mark.parametrize("config, grid", [
    (BASE.replace(learning_rate=0.5), Grid(learning_rates=(0.5, 1e38, 0.1))),
    (MLP.replace(optimizer="momentum"), Grid(learning_rates=(0.05, 1e30), momentums=(0.0, 0.9))),
    # adam moves each param by about the learning rate whatever its gradient: a member driven to 1e38 by it
    # differs between layouts by the rounding of gradients near zero, so adam's members all stay finite here.
    (MLP.replace(optimizer="adam"), Grid(learning_rates=(0.01, 0.003), seeds=(0, 2))),
])
def test_the_wide_layout_matches_solo_runs_and_freezes_a_diverging_member(tiny_data, monkeypatch, config, grid,
                                                                          wide_from_two_members):
    trainer, state = _train_sweep(config, grid, tiny_data)
    assert trainer.layout == "wide"
    vmapped_trainer, vmapped = _vmapped_sweep(monkeypatch, config, grid, tiny_data)
    assert vmapped_trainer.layout == "vmapped"
    frozen_at = trainer.frozen_at(state)
    assert frozen_at.tolist() == vmapped_trainer.frozen_at(vmapped).tolist()
    members = grid.members(config)
    diverging = [i for i, m in enumerate(members) if m.learning_rate >= 1e30]
    assert all(1 <= frozen_at[i] <= 5 for i in diverging)
    assert bool(diverging) == (config.optimizer != "adam")
    for index, member in enumerate(members):
        if index in diverging:  # frozen where the general path froze it, with the same params
            _close(trainer.member_params(state, index), vmapped_trainer.member_params(vmapped, index))
            continue
        assert frozen_at[index] == -1
        alone = fit(member, tiny_data, get_model(member.model, member.hidden_sizes), progress=False)
        _close(trainer.member_params(state, index), alone.params)


def test_the_wide_layout_keeps_schedules_weight_decay_and_clipping_per_member(tiny_data, wide_from_two_members):
    """Clipping takes each member's global norm over leaves whose member axes differ in the wide layout."""
    config = MLP.replace(optimizer="adam", learning_rate=0.01, schedule="warmup-cosine", warmup_steps=5,
                         num_steps=40)
    grid = Grid(weight_decays=(0.0, 0.05), clip_norms=(0.0, 0.5))
    trainer, state = _train_sweep(config, grid, tiny_data, chunk=15)
    assert trainer.layout == "wide"
    for index, member in enumerate(grid.members(config)):
        alone = fit(member, tiny_data, get_model("mlp", (16,)), progress=False)
        _close(trainer.member_params(state, index), alone.params)


def _compiled_text(trainer: SweepTrainer, num_steps: int = 5) -> str:
    state = trainer.init_state()
    order, offset = trainer._orders(0, num_steps)
    return trainer._chunk.lower(state.params, state.opt_state, state.frozen_at, trainer.train_images_uint8,
                                trainer.train_labels, order, offset, 0, *trainer._keys,
                                batch_size=trainer.base.batch_size, num_steps=num_steps).compile().as_text()


def _transposes(text: str) -> list[str]:
    """The program's transpose instructions (not its metadata, which names JAX's "transpose" of a jvp)."""
    return [line for line in text.splitlines() if re.search(r"= \S+ transpose\(", line)]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="reads XLA's CPU program")
def test_the_wide_layout_compiles_without_the_vmapped_steps_transposes(tiny_data, monkeypatch, wide_from_two_members):
    """bench/NOTES.md item 14: the vmapped step transposes the members' weights every step; the wide
    layout's program has no transpose at all (its two layout swaps per chunk are copies)."""
    config, grid = BASE, Grid(learning_rates=(0.1, 0.5, 0.2))
    model = get_model("linear")
    wide = SweepTrainer(config, grid.members(config), tiny_data, model, resolve_placement())
    with monkeypatch.context() as patched:
        patched.setattr(sweep_module, "wide_layout_applies", lambda *args: False)
        vmapped = SweepTrainer(config, grid.members(config), tiny_data, model, resolve_placement())
    assert (wide.layout, vmapped.layout) == ("wide", "vmapped")
    assert _transposes(_compiled_text(vmapped))  # the check can see what it looks for
    assert _transposes(_compiled_text(wide)) == []


def _stateful_linear():
    """The linear model with a training mode that changes nothing: a stateful model to jaxlin."""
    model = get_model("linear")
    return model._replace(train_apply=lambda params, images, key: (model.apply(params, images), params))


class DenseLookalike:
    """A user's model whose params are laid out like jaxlin's dense layers but whose apply is its own."""

    def init(self, key):
        return [{"w": jax.numpy.zeros((784, 10)), "b": jax.numpy.zeros((10,))}]

    def apply(self, params, images):
        return (images * 2.0) @ params[0]["w"] + params[0]["b"]


@pytest.mark.parametrize("case", ["per-member orders", "stateful", "user model", "bfloat16", "mlp"])
def test_the_general_path_stays_where_the_wide_layout_does_not_apply(tiny_data, case, wide_from_two_members):
    config, grid, model = BASE, Grid(learning_rates=(0.1, 0.5)), get_model("linear")
    if case == "per-member orders":
        grid = Grid(data_seeds=(0, 5))
    elif case == "stateful":
        model = _stateful_linear()
    elif case == "user model":
        model = as_model(DenseLookalike(), "tests:DenseLookalike", (28, 28, 1), 10)
        assert model.first_layer_dense  # it does look dense
    elif case == "bfloat16":
        config = config.replace(compute_dtype="bfloat16")
    else:
        config, model = MLP, get_model("mlp", (16,))
    trainer = SweepTrainer(config, grid.members(config), tiny_data, model, resolve_placement())
    assert trainer.layout == ("wide" if case == "mlp" else "vmapped")
    state = trainer.run_chunk(trainer.init_state(), 3)[0]  # and it trains
    assert trainer.frozen_at(state).tolist() == [-1, -1]


def test_the_wide_chunk_refuses_a_model_it_cannot_lay_out():
    with pytest.raises(ValueError, match="wide layout"):
        sweep_module.sweep_chunk(None, None, shared_order=True, model=_stateful_linear(), wide=True)
    with pytest.raises(ValueError, match="wide layout"):
        sweep_module.sweep_chunk(None, None, shared_order=False, model=get_model("linear"), wide=True)
